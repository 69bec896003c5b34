"""Peers and config helpers for tests/e2e/test_upstream_tls.py: keygate's
TLS towards its upstreams ([upstream.tls], [upstream.vault.tls]).

- TlsOpenBao: an OpenBao dev server with its usual plain listener (for the
  fixtures' own set-up) plus a second listener serving TLS with the test CA's
  server certificate and *requiring* a client certificate from that CA.
- TlsMoto: moto_server serving HTTPS itself (its -c/-k options).
- MtlsProxy: a TLS-terminating TCP relay that requires a client certificate
  (ssl.CERT_REQUIRED) in front of a plain moto; moto cannot ask for one.
- UpstreamTlsKeygate: harness.Keygate whose rendered config is post-processed
  (an endpoint, [upstream.tls], [upstream.vault.tls]) and whose environment
  can carry extra variables (VAULT_SKIP_VERIFY, VAULT_CACERT, ...).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import boto3
import hvac
import pytest
from botocore.config import Config

from certs import KeyPair, Pki
from harness import (
    PY_TOOLS_HINT,
    REGION,
    VAULT_KV_MOUNT,
    VAULT_ROOT_TOKEN,
    Keygate,
    OpenBao,
    ProcessExited,
    free_port,
    http_call,
    require_executable,
    tail,
    tls_context,
    toml_table,
    wait_until,
)

# --------------------------------------------------------------------------
# keygate config post-processing


def insert_table(config: str, after_table: str, name: str, keys: dict[str, Any]) -> str:
    """Insert [name] with `keys` right after the body of [after_table]."""
    header = f"[{after_table}]\n"
    start = config.find("\n" + header)
    assert start >= 0, f"no [{after_table}] table in the rendered config:\n{config}"
    body_start = start + 1 + len(header)
    nxt = re.compile(r"^\[", re.M).search(config, body_start)
    at = nxt.start() if nxt else len(config)
    table = toml_table(name, keys).lstrip("\n") + "\n"
    return config[:at] + table + config[at:]


def set_aws_endpoint(config: str, endpoint: str) -> str:
    """Add `endpoint = ...` to [upstream] (the test config has kind = "aws")."""
    anchor = '\nkind = "aws"\n'
    assert anchor in config, f"the rendered config has no kind = \"aws\":\n{config}"
    return config.replace(anchor, f'{anchor}endpoint = "{endpoint}"\n', 1)


def upstream_tls_keys(
    *,
    ca_bundle: Path | str | None = None,
    client: KeyPair | None = None,
    insecure_skip_verify: bool | None = None,
    client_cert: Path | str | None = None,
    client_key: Path | str | None = None,
) -> dict[str, Any]:
    """The keys of an [upstream.tls] / [upstream.vault.tls] table."""
    keys: dict[str, Any] = {"ca_bundle": ca_bundle}
    if client is not None:
        keys["client_cert"], keys["client_key"] = client.cert, client.key
    if client_cert is not None:
        keys["client_cert"] = client_cert
    if client_key is not None:
        keys["client_key"] = client_key
    keys["insecure_skip_verify"] = insecure_skip_verify
    return {k: v for k, v in keys.items() if v is not None}


class UpstreamTlsKeygate(Keygate):
    """harness.Keygate plus: `aws_endpoint` ([upstream] endpoint), `aws_tls`
    ([upstream.tls] keys), `vault_tls` ([upstream.vault.tls] keys, needs
    vault_addr) and `extra_env` (added to keygate's environment)."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        upstream_url: str,
        *,
        aws_endpoint: str | None = None,
        aws_tls: dict[str, Any] | None = None,
        vault_tls: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        **config_opts: Any,
    ):
        super().__init__(binary, workdir, upstream_url, **config_opts)
        self.extra_env = dict(extra_env or {})
        text = self.config_path.read_text()
        if aws_endpoint is not None:
            text = set_aws_endpoint(text, aws_endpoint)
        if aws_tls is not None:
            text = insert_table(text, "upstream", "upstream.tls", aws_tls)
        if vault_tls is not None:
            assert config_opts.get("vault_addr"), "vault_tls needs vault_addr"
            text = insert_table(text, "upstream.vault", "upstream.vault.tls", vault_tls)
        self.config_path.write_text(text)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env

    def start_expecting_failure(self, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run `keygate serve` that must exit on its own (start-up refused)."""
        self.spawn(" (expecting failure)")
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"keygate should have refused to start but was still running after {timeout}s\n"
                f"--- keygate log ---\n{self.log()}"
            ) from None
        return subprocess.CompletedProcess(self.proc.args, code, self.log(), "")

    def check(self) -> subprocess.CompletedProcess:
        """`keygate check --config` on this keygate's config."""
        return subprocess.run(
            [str(self.binary), "check", "--config", str(self.config_path)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def log_lines_since(self, mark: int) -> str:
        """Log text written after `mark` (a length from log_mark())."""
        return self.log_path.read_text(errors="replace")[mark:]

    def log_mark(self) -> int:
        return len(self.log_path.read_text(errors="replace")) if self.log_path.exists() else 0


# --------------------------------------------------------------------------
# OpenBao with a TLS listener that requires client certificates

TLS_KV_PATH = "demo/tls-upstream"  # under secret/; demo-app may read secret/demo/*
APPROLE_NAME = "keygate"


class TlsOpenBao(OpenBao):
    """OpenBao dev server: the plain dev listener on `url` (fixtures set up
    through it) and a TLS listener on `tls_url` with the test PKI's server
    certificate, requiring a client certificate signed by the test CA."""

    def __init__(self, workdir: Path, pki: Pki):
        super().__init__(workdir)
        self.pki = pki
        # The dev listener's cluster address is its port + 1: keep clear of it.
        while True:
            self.tls_port = free_port()
            if abs(self.tls_port - self.port) > 2:
                break
        self.tls_url = f"https://127.0.0.1:{self.tls_port}"
        self.config_path = workdir / "tls-listener.hcl"

    def server_args(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"""\
listener "tcp" {{
  address = "127.0.0.1:{self.tls_port}"
  cluster_address = "127.0.0.1:{free_port()}"
  tls_cert_file = "{self.pki.server.cert}"
  tls_key_file = "{self.pki.server.key}"
  tls_client_ca_file = "{self.pki.ca}"
  tls_require_and_verify_client_cert = "true"
}}
"""
        )
        return [f"-config={self.config_path}"]

    def is_ready(self) -> bool:
        """The plain listener serves KV, and the TLS one answers a client certificate."""
        if not super().is_ready():
            return False
        ctx = tls_context(self.pki.ca, self.pki.spiffe.pair())
        return http_call(self.tls_url, "GET", "/v1/sys/health", timeout=2, context=ctx).status == 200

    def setup(self) -> None:
        root = self.client()
        root.sys.create_or_update_policy(
            name="admin",
            policy='path "*" {\n  capabilities = ["create", "read", "update", "patch", "delete", "list", "sudo"]\n}\n',
        )
        root.sys.enable_auth_method("approle")

    def seed_secret(self, data: dict[str, str]) -> None:
        self.client().secrets.kv.v2.create_or_update_secret(path=TLS_KV_PATH, secret=data, mount_point=VAULT_KV_MOUNT)

    def approle(self, token_ttl: str = "1h") -> tuple[str, str]:
        """(role_id, secret_id) of an AppRole with the admin policy."""
        root = self.client()
        root.auth.approle.create_or_update_approle(
            APPROLE_NAME, token_policies=["admin"], token_ttl=token_ttl, token_max_ttl="1h"
        )
        role_id = root.auth.approle.read_role_id(APPROLE_NAME)["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id(APPROLE_NAME)["data"]["secret_id"]
        return role_id, secret_id

    def tls_client(self, cert: tuple[str, str] | None) -> hvac.Client:
        """hvac straight to the TLS listener (checks the peer itself)."""
        return hvac.Client(url=self.tls_url, token=VAULT_ROOT_TOKEN, verify=str(self.pki.ca), cert=cert, timeout=10)


# --------------------------------------------------------------------------
# moto over HTTPS


class TlsMoto:
    """moto_server serving HTTPS itself (-c cert -k key)."""

    def __init__(self, workdir: Path, pki: Pki):
        self.workdir = workdir
        self.pki = pki
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto-tls.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "TlsMoto":
        exe = require_executable("moto_server", PY_TOOLS_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(self.port), "-c", str(self.pki.server.cert), "-k", str(self.pki.server.key)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ctx = tls_context(self.pki.ca)

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise ProcessExited(f"moto_server exited with {self.proc.returncode}")
            http_call(self.url, "GET", "/moto-api/", timeout=2, context=ctx)
            return True

        try:
            wait_until(answers, timeout=30, what="moto_server (HTTPS) to answer")
        except Exception as exc:
            self.stop()
            pytest.fail(f"moto_server with TLS did not start: {exc}\n--- log ---\n{tail(self.log_path)}", pytrace=False)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        return boto3.client(
            "secretsmanager",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            verify=str(self.pki.ca),
            config=Config(retries={"max_attempts": 1}),
        )


# --------------------------------------------------------------------------
# TLS-terminating relay that requires a client certificate


class MtlsProxy:
    """Accepts TLS on 127.0.0.1:port with `server` (cert, key), requires a
    client certificate signed by `client_ca`, and relays the decrypted bytes
    to `backend` (host, port). Handshake failures are recorded in `failures`."""

    def __init__(self, server: KeyPair, client_ca: Path, backend: tuple[str, int]):
        self.backend = backend
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(server.cert), str(server.key))
        self.ctx.load_verify_locations(cafile=str(client_ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.failures: list[str] = []
        self.accepted = 0  # handshakes completed (with a verified client certificate)
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mtls-proxy", daemon=True)

    def start(self) -> "MtlsProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._sock.close()
        with self._lock:
            for s in list(self._open):
                _close(s)
            self._open.clear()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._open.add(s)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)  # so that stop() is noticed promptly
        while not self._stopped.is_set():
            try:
                raw, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            raw.settimeout(None)
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        self._track(raw)
        raw.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            _close(raw)
            return
        with self._lock:
            self.accepted += 1
        self._track(tls)
        try:
            upstream = socket.create_connection(self.backend, timeout=10)
        except OSError:
            _close(tls)
            return
        self._track(upstream)
        try:
            _relay(tls, upstream)
        finally:
            _close(upstream)
            _close(tls)


def _relay(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy bytes both ways in one thread (an SSLSocket must not be read and
    written from two threads at once) until either side closes."""
    tls.settimeout(30)
    plain.settimeout(30)
    while True:
        readable = [tls] if tls.pending() else select.select([tls, plain], [], [], 30)[0]
        if not readable:
            return  # idle for 30 s
        try:
            if tls in readable:
                data = tls.recv(65536)
                if not data:
                    return
                plain.sendall(data)
            if plain in readable:
                data = plain.recv(65536)
                if not data:
                    return
                tls.sendall(data)
        except OSError:
            return


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


__all__ = [
    "MtlsProxy",
    "TLS_KV_PATH",
    "TlsMoto",
    "TlsOpenBao",
    "UpstreamTlsKeygate",
    "insert_table",
    "set_aws_endpoint",
    "timed",
    "upstream_tls_keys",
]
