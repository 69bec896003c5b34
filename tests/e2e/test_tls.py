"""TLS on keygate's listeners and client certificates as workload identity
(mTLS), with real clients: boto3, hvac, curl, Python's ssl module; plus the
shipped scripts/make-certs.sh and config/tls.toml."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.exceptions
import pytest
import requests
from certs import (
    CI_SPIFFE,
    DEMO_CN,
    DEMO_IN_CI_SPIFFE,
    DEMO_SPIFFE,
    IDENTITY_CERTIFICATES,
    OTHER_DNS,
    SHARED_SPIFFE,
    UNMAPPED_SPIFFE,
    KeyPair,
    Pki,
    der_fingerprint,
)
from harness import (
    DEMO_APP,
    OTHER_APP,
    PROD_DB,
    OTHER_APP_TOKEN,
    REPO,
    SECRETS,
    VAULT_DEMO_DB,
    VAULT_SECRETS,
    WORKLOAD_TOKEN,
    Identity,
    Keygate,
    aws_request_headers,
    client_error,
    describe,
    error_of,
    expect_vault_forbidden,
    http_call,
    http_connection,
    kv_read,
    render_config,
    require_executable,
    run,
    tls_context,
    wait_until,
)

# SDKs insist on credentials; with a client certificate, an access key id
# keygate never issued leaves the certificate as the only proof.
DUMMY = Identity("nobody", "AKIAEXAMPLEEXAMPLE1", "anything-at-all")
DEMO_SECRET = "demo/db/password"
OPENSSL_HINT = "install OpenSSL (`apt-get install openssl`)"
CURL_HINT = "install curl (`apt-get install curl`)"
# make-certs.sh's default client name
MAKE_CERTS_SPIFFE = "spiffe://example.org/ns/payments/sa/api"


def tls_settings(pki: Pki, **overrides) -> dict:
    """[server.tls] for the workload listener: the test server certificate,
    client certificates from the workload CA, optional (SigV4 and tokens
    still work without one)."""
    return {"cert": pki.server.cert, "key": pki.server.key, "client_ca": pki.ca, "client_auth": "optional", **overrides}


@pytest.fixture
def start_tls_keygate(start_keygate, pki: Pki):
    """start_tls_keygate(**opts): keygate with [server.tls] (tls_settings),
    the identities' certificate names (certs.IDENTITY_CERTIFICATES), and
    clients that trust the test CA."""

    def start(**opts) -> Keygate:
        opts.setdefault("tls", tls_settings(pki))
        opts.setdefault("certificates", IDENTITY_CERTIFICATES)
        opts.setdefault("ca_bundle", pki.ca)
        return start_keygate(**opts)

    return start


@pytest.fixture
def mtls_keygate(start_tls_keygate) -> Keygate:
    return start_tls_keygate()


@pytest.fixture
def mtls_vault_keygate(start_tls_keygate, vault_upstream) -> Keygate:
    return start_tls_keygate(vault_addr=vault_upstream.url)


def audit_by_certificate(kg: Keygate, name: str) -> dict:
    """The newest audit record of a workload request proven by certificate `name`."""
    records = [e for e in kg.admin.audit() if e.get("certificate") == name]
    assert records, f"no audit record with certificate {name!r}: {json.dumps(kg.admin.audit())[:2000]}"
    return records[-1]


# How each client reports a TLS failure: botocore, requests (hvac), ssl
TLS_ERRORS = (botocore.exceptions.SSLError, requests.exceptions.SSLError, ssl.SSLError)


def expect_tls_failure(call) -> Exception:
    """Run a client call that must fail in TLS (the handshake refused, or with
    TLS 1.3 the connection dropped right after it), never with an HTTP answer."""
    try:
        result = call()
    except TLS_ERRORS as exc:
        return exc
    raise AssertionError(f"expected a TLS failure, got a result: {str(result)[:300]}")


def expect_no_http_answer(plain_url: str) -> None:
    """Plain HTTP to a TLS port must not get an HTTP answer."""
    try:
        resp = http_call(plain_url, "GET", "/readyz", timeout=5)
    except (OSError, http.client.HTTPException):
        return
    raise AssertionError(f"plain HTTP to a TLS listener got HTTP {resp.status}: {resp.text[:200]}")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def presented_fingerprint(kg: Keygate, ca: Path) -> str:
    """SHA-256 of the certificate keygate presents to a new handshake."""
    ctx = tls_context(ca)
    with socket.create_connection(("127.0.0.1", port_of(kg.endpoint)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return der_fingerprint(tls.getpeercert(binary_form=True))


# --------------------------------------------------------------------------
# Server TLS with SigV4 (no client certificate)


def test_boto3_over_https_with_sigv4_and_no_client_ca(start_keygate, pki):
    kg = start_keygate(tls={"cert": pki.server.cert, "key": pki.server.key}, ca_bundle=pki.ca)
    assert kg.endpoint.startswith("https://")

    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    code, _message, status = client_error(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=DEMO_SECRET))
    assert (code, status) == ("AccessDeniedException", 400), "policy still applies over TLS"
    expect_no_http_answer(kg.endpoint.replace("https://", "http://"))


def test_held_request_over_tls_is_answered_after_approval_and_the_client_reconnects(mtls_keygate):
    """A held request on a TLS connection is parked off hyper like a plain
    one: its answer comes over the same TLS session, which then closes."""
    client = mtls_keygate.client()
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.get_secret_value, SecretId=PROD_DB)
        pending = mtls_keygate.admin.wait_for_pending(resource=PROD_DB)
        mtls_keygate.admin.approve(pending["id"], comment="tls")
        assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    assert client.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]


def test_sigv4_without_client_certificate_still_works_when_mtls_is_optional(mtls_keygate):
    assert mtls_keygate.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    # ...and a key keygate never issued, without a certificate, is refused as before
    code, message, status = client_error(lambda: mtls_keygate.client(DUMMY).get_secret_value(SecretId=DEMO_SECRET))
    assert status in (400, 403) and code, (code, status, message)


def test_client_refuses_a_server_certificate_it_does_not_trust(mtls_keygate, pki):
    sm = mtls_keygate.client(verify=str(pki.wrong_ca))
    exc = expect_tls_failure(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc

    curl = require_executable("curl", CURL_HINT)
    result = run([curl, "-sS", "--cacert", pki.wrong_ca, "-X", "POST", mtls_keygate.endpoint + "/"], timeout=30)
    assert result.returncode == 60, f"curl should fail to verify the server (exit 60)\n{describe(result)}"


def test_keygate_serving_a_certificate_from_another_ca_is_refused(start_tls_keygate, pki):
    kg = start_tls_keygate(tls=tls_settings(pki, cert=pki.wrong_ca_server.cert, key=pki.wrong_ca_server.key))
    exc = expect_tls_failure(lambda: kg.client().get_secret_value(SecretId=DEMO_SECRET))
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc


# --------------------------------------------------------------------------
# Protocol versions and ALPN


def _handshake(kg: Keygate, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port_of(kg.endpoint)), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def _versioned_context(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = tls_context(pki.ca)
    if version < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 refuses TLS 1.0/1.1 on its own at the default security
        # level; lower it so that the refusal we see is keygate's.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated: that's the point
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def test_tls_1_1_is_refused_1_2_and_1_3_are_accepted(mtls_keygate, pki):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with _handshake(mtls_keygate, _versioned_context(pki, version)) as tls:
            assert tls.version() == version.name.replace("_", "."), tls.version()  # TLSv1.2, TLSv1.3

    with pytest.raises(ssl.SSLError) as excinfo:
        _handshake(mtls_keygate, _versioned_context(pki, ssl.TLSVersion.TLSv1_1)).close()
    reason = str(excinfo.value)
    assert "NO_PROTOCOLS_AVAILABLE" not in reason, f"the client itself refused TLS 1.1, test is void: {reason}"
    # keygate answers with an alert (protocol_version, or handshake_failure:
    # a TLS 1.1 hello lacks what TLS 1.2 needs)
    assert "ALERT" in reason.upper(), reason


def test_tls_1_1_is_refused_by_openssl_s_client(mtls_keygate):
    openssl = require_executable("openssl", OPENSSL_HINT)
    result = run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port_of(mtls_keygate.endpoint)}", "-tls1_1",
         "-cipher", "DEFAULT:@SECLEVEL=0"],
        timeout=30,
    )  # fmt: skip
    assert result.returncode != 0, describe(result)
    output = result.stdout + result.stderr
    assert "alert" in output and "no protocols available" not in output, describe(result)


def test_keygate_prefers_aes_128_gcm_among_the_suites_a_client_offers(mtls_keygate, pki):
    # OpenSSL lists AES-256-GCM first; keygate's own order puts AES-128-GCM
    # first (its TLS 1.3 suite hashes with SHA-256, which CPUs accelerate).
    for version, preferred in (
        (ssl.TLSVersion.TLSv1_3, "TLS_AES_128_GCM_SHA256"),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ):
        ctx = _versioned_context(pki, version)
        offered = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == version.name.replace("_", ".")]
        assert offered[0] in ("TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"), f"the client prefers {offered[0]}: test is void"
        with _handshake(mtls_keygate, ctx) as tls:
            assert tls.cipher()[0] == preferred, (version, tls.cipher())

    # Only among what the client offers: a ChaCha20-only TLS 1.2 client gets ChaCha20.
    ctx = _versioned_context(pki, ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    with _handshake(mtls_keygate, ctx) as tls:
        assert tls.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305", tls.cipher()


def test_alpn_offers_h2_and_http_1_1(mtls_keygate, pki):
    for offered, selected in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = tls_context(pki.ca)
        ctx.set_alpn_protocols(offered)
        with _handshake(mtls_keygate, ctx) as tls:
            assert tls.selected_alpn_protocol() == selected, (offered, tls.selected_alpn_protocol())


# --------------------------------------------------------------------------
# mTLS: the client certificate as identity (AWS front)


def test_mtls_standalone_with_dummy_credentials(mtls_keygate, pki):
    sm = mtls_keygate.client(DUMMY, client_cert=pki.spiffe.pair())

    assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]

    record = audit_by_certificate(mtls_keygate, DEMO_SPIFFE)
    assert record["identity"] == "demo-app", record
    assert record["operation"] == "GetSecretValue", record


def test_mtls_standalone_with_curl_over_http2_and_no_authorization_header(mtls_keygate, pki):
    curl = require_executable("curl", CURL_HINT)
    for http_flag, expected_version in (("--http2", "2"), ("--http1.1", "1.1")):
        result = run(
            [
                curl, "-sS", http_flag,
                "--cacert", pki.ca, "--cert", pki.spiffe.cert, "--key", pki.spiffe.key,
                "-H", "Content-Type: application/x-amz-json-1.1",
                "-H", "X-Amz-Target: secretsmanager.GetSecretValue",
                "--data", json.dumps({"SecretId": DEMO_SECRET}),
                "-w", "\n%{http_code} %{http_version}",
                mtls_keygate.endpoint + "/",
            ],
            timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, describe(result)
        body, _, status_line = result.stdout.rpartition("\n")
        assert status_line == f"200 {expected_version}", describe(result)
        assert json.loads(body)["SecretString"] == SECRETS[DEMO_SECRET]


@pytest.mark.parametrize(
    "cert_name, certificate, identity",
    [
        ("spiffe", DEMO_SPIFFE, "demo-app"),  # the SPIFFE ID wins over the cert's DNS SAN
        ("dns", OTHER_DNS, "other-app"),  # DNS SAN, not the CN
        ("cn", DEMO_CN, "demo-app"),  # no SAN: the subject CN
        ("ci", CI_SPIFFE, "other-app"),  # glob spiffe://keygate.test/ns/ci/*
        ("demo_in_ci", DEMO_IN_CI_SPIFFE, "demo-app"),  # exact beats other-app's glob
    ],
)
def test_certificate_names_map_to_identities(mtls_keygate, pki, cert_name, certificate, identity):
    pair: KeyPair = getattr(pki, cert_name)
    sm = mtls_keygate.client(DUMMY, client_cert=pair.pair())

    if identity == "demo-app":
        assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    else:
        code, _message, status = client_error(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))
        assert (code, status) == ("AccessDeniedException", 400), "other-app may not read demo/*"

    record = audit_by_certificate(mtls_keygate, certificate)
    assert record["identity"] == identity, record


@pytest.mark.parametrize(
    "cert_name, message_contains",
    [
        ("unmapped", UNMAPPED_SPIFFE),
        ("shared", SHARED_SPIFFE),  # globs of two identities match: refused, not guessed
        ("two_spiffe", "SPIFFE"),  # more than one SPIFFE ID
    ],
)
def test_certificates_that_name_no_single_identity_are_refused(mtls_keygate, pki, cert_name, message_contains):
    sm = mtls_keygate.client(DUMMY, client_cert=getattr(pki, cert_name).pair())

    code, message, status = client_error(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))

    assert (code, status) == ("AccessDeniedException", 403), (code, status, message)
    assert message_contains in message, message


def test_mtls_with_the_same_identitys_keygate_key_passes(mtls_keygate, pki):
    sm = mtls_keygate.client(DEMO_APP, client_cert=pki.spiffe.pair())
    assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]


def test_mtls_with_another_identitys_keygate_key_is_refused(mtls_keygate, pki):
    sm = mtls_keygate.client(OTHER_APP, client_cert=pki.spiffe.pair())

    code, message, status = client_error(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))

    assert (code, status) == ("AccessDeniedException", 403), (code, status, message)
    assert "demo-app" in message and "other-app" in message, message


def test_mtls_with_a_keygate_key_still_verifies_the_signature(mtls_keygate, pki):
    sm = mtls_keygate.client(DEMO_APP, secret_key="not-the-secret-key", client_cert=pki.spiffe.pair())

    code, message, status = client_error(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))

    assert (code, status) == ("InvalidSignatureException", 400), (code, status, message)


@pytest.mark.parametrize("cert_name", ["wrong_ca_client", "expired"])
def test_wrong_ca_and_expired_client_certificates_fail_the_handshake(mtls_keygate, pki, cert_name):
    sm = mtls_keygate.client(DUMMY, client_cert=getattr(pki, cert_name).pair())
    expect_tls_failure(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))
    # the same with a keygate key: the certificate is checked before anything else
    sm = mtls_keygate.client(DEMO_APP, client_cert=getattr(pki, cert_name).pair())
    expect_tls_failure(lambda: sm.get_secret_value(SecretId=DEMO_SECRET))


def test_required_client_auth_refuses_a_client_without_certificate(start_tls_keygate, pki):
    kg = start_tls_keygate(tls=tls_settings(pki, client_auth="required"))

    expect_tls_failure(lambda: kg.client().get_secret_value(SecretId=DEMO_SECRET))
    sm = kg.client(DUMMY, client_cert=pki.spiffe.pair())
    assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]


# --------------------------------------------------------------------------
# mTLS on the Vault front (hvac)


def test_hvac_certificate_alone_is_the_identity(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token="", cert=pki.spiffe.pair())
    assert kv_read(client, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]
    assert audit_by_certificate(mtls_vault_keygate, DEMO_SPIFFE)["identity"] == "demo-app"


def test_hvac_certificate_with_the_same_identitys_token_passes(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token=WORKLOAD_TOKEN, cert=pki.spiffe.pair())
    assert kv_read(client, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_hvac_token_without_certificate_still_works(mtls_vault_keygate):
    assert kv_read(mtls_vault_keygate.vault(WORKLOAD_TOKEN), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_hvac_certificate_with_another_identitys_token_is_refused(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token=OTHER_APP_TOKEN, cert=pki.spiffe.pair())
    message = expect_vault_forbidden(lambda: kv_read(client, VAULT_DEMO_DB))
    assert "demo-app" in message and "other-app" in message, message


def test_hvac_certificate_with_an_unknown_token_is_refused(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token="kg-no-such-token", cert=pki.spiffe.pair())
    expect_vault_forbidden(lambda: kv_read(client, VAULT_DEMO_DB))


def test_hvac_unmapped_certificate_is_refused(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token="", cert=pki.unmapped.pair())
    expect_vault_forbidden(lambda: kv_read(client, VAULT_DEMO_DB), message_contains=UNMAPPED_SPIFFE)


def test_hvac_wrong_ca_certificate_fails_the_handshake(mtls_vault_keygate, pki):
    client = mtls_vault_keygate.vault(token="", cert=pki.wrong_ca_client.pair())
    expect_tls_failure(lambda: kv_read(client, VAULT_DEMO_DB))


# --------------------------------------------------------------------------
# Certificate reload


def _replace_atomically(source: Path, target: Path) -> None:
    staging = target.with_name(target.name + ".new")
    shutil.copyfile(source, staging)
    os.replace(staging, target)


class Hammer:
    """Threads that call GetSecretValue in a loop, each call on a new TLS
    connection (Connection: close), and count what failed."""

    def __init__(self, kg: Keygate, threads: int = 3):
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        # boto3 clients are made here: creating them is not thread-safe
        clients = [kg.client(retries={"total_max_attempts": 1}) for _ in range(threads)]
        for sm in clients:
            sm.meta.events.register("before-send.secrets-manager", self._close_after)
        self.threads = [threading.Thread(target=self._run, args=(sm,), daemon=True) for sm in clients]

    @staticmethod
    def _close_after(request, **_):
        request.headers["Connection"] = "close"  # after signing: a new handshake per call

    def _run(self, sm) -> None:
        while not self.stop.is_set():
            try:
                value = sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"]
                assert value == SECRETS[DEMO_SECRET]
                with self.lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.failures.append(repr(exc))

    def __enter__(self) -> "Hammer":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.parametrize("trigger", ["file-change", "sighup"])
def test_certificate_reload_serves_without_failures_and_new_handshakes_get_the_new_certificate(
    start_tls_keygate, pki, tmp_path, trigger
):
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert, key = tls_dir / "server.pem", tls_dir / "server.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    interval = "200ms" if trigger == "file-change" else "1h"
    kg = start_tls_keygate(tls=tls_settings(pki, cert=cert, key=key, reload_interval=interval))
    old, new = pki.server.fingerprint(), pki.server2.fingerprint()
    assert presented_fingerprint(kg, pki.ca) == old

    # a keep-alive connection opened before the reload
    early = http_connection(kg.endpoint, context=tls_context(pki.ca))
    body = json.dumps({"SecretId": DEMO_SECRET})

    def early_call() -> int:
        early.request("POST", "/", body=body, headers=aws_request_headers(kg.endpoint, "GetSecretValue", body))
        resp = early.getresponse()
        resp.read()
        return resp.status

    try:
        assert early_call() == 200
        with Hammer(kg) as hammer:
            time.sleep(0.7)
            _replace_atomically(pki.server2.key, key)
            _replace_atomically(pki.server2.cert, cert)
            if trigger == "sighup":
                time.sleep(0.7)
                assert presented_fingerprint(kg, pki.ca) == old, "reload_interval is 1h: nothing reloads before SIGHUP"
                kg.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: presented_fingerprint(kg, pki.ca) == new, timeout=5, what="the new certificate")
            time.sleep(0.7)

        assert hammer.failures == [], f"{len(hammer.failures)} failed calls during the reload: {hammer.failures[:5]}"
        assert hammer.ok >= 10, f"only {hammer.ok} calls went through; the test proves little"
        # the connection from before still works, with the certificate it started with
        assert early_call() == 200
        assert der_fingerprint(early.sock.getpeercert(binary_form=True)) == old
        assert kg.running, "SIGHUP must not stop keygate"
    finally:
        early.close()


def test_a_broken_certificate_file_keeps_the_last_good_one(start_tls_keygate, pki, tmp_path):
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert, key = tls_dir / "server.pem", tls_dir / "server.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    kg = start_tls_keygate(tls=tls_settings(pki, cert=cert, key=key, reload_interval="200ms"))

    staging = tls_dir / "broken.pem"
    staging.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    os.replace(staging, cert)
    time.sleep(0.8)

    assert presented_fingerprint(kg, pki.ca) == pki.server.fingerprint()
    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    # fixed again: the new pair is picked up
    _replace_atomically(pki.server2.key, key)
    _replace_atomically(pki.server2.cert, cert)
    new = pki.server2.fingerprint()
    wait_until(lambda: presented_fingerprint(kg, pki.ca) == new, timeout=5, what="the fixed certificate")


# --------------------------------------------------------------------------
# The admin listener over TLS


@pytest.fixture
def admin_tls_keygate(start_tls_keygate, pki) -> Keygate:
    """keygate whose admin listener takes only approver certificates (approvers CA)."""
    return start_tls_keygate(
        admin_tls={"cert": pki.server.cert, "key": pki.server.key, "client_ca": pki.approvers_ca},
        admin_client_cert=pki.approver.pair(),
    )


def test_admin_api_over_tls_with_an_approver_certificate(admin_tls_keygate):
    assert admin_tls_keygate.admin_url.startswith("https://")
    assert admin_tls_keygate.admin.requests("pending") == []


def test_admin_listener_refuses_a_workload_certificate_at_the_handshake(admin_tls_keygate, pki):
    for client_cert in (pki.spiffe.pair(), None):
        ctx = tls_context(pki.ca, client_cert)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            http_call(admin_tls_keygate.admin_url, "GET", "/readyz", context=ctx, timeout=5)


def test_admin_api_rejects_a_workload_token_over_tls(admin_tls_keygate):
    resp = admin_tls_keygate.admin.call("GET", "/admin/v1/requests", token=WORKLOAD_TOKEN)
    assert resp.status == 403, resp.text
    error_of(resp)


def test_admin_listener_refuses_plain_http(admin_tls_keygate):
    expect_no_http_answer(admin_tls_keygate.admin_url.replace("https://", "http://"))


# --------------------------------------------------------------------------
# Config checks


def _check(keygate_bin, tmp_path: Path, config: str) -> subprocess.CompletedProcess:
    path = tmp_path / "keygate.toml"
    path.write_text(config)
    return run([keygate_bin, "check", "--config", path], cwd=tmp_path)


def test_check_refuses_non_loopback_admin_listen_without_admin_tls(keygate_bin, tmp_path, pki):
    base = dict(listen="127.0.0.1:8740", admin_listen="0.0.0.0:8741", state=str(tmp_path / "kg.db"))

    refused = _check(keygate_bin, tmp_path, render_config(**base))
    assert refused.returncode == 64, describe(refused)
    assert "admin_tls" in refused.stderr, describe(refused)

    admin_tls = {"cert": pki.server.cert, "key": pki.server.key}
    accepted = _check(keygate_bin, tmp_path, render_config(**base, admin_tls=admin_tls))
    assert accepted.returncode == 0, describe(accepted)


def test_check_refuses_vault_passthrough_with_client_certificates(keygate_bin, tmp_path, pki):
    base = dict(
        listen="127.0.0.1:8740",
        admin_listen="127.0.0.1:8741",
        state=str(tmp_path / "kg.db"),
        vault_addr="http://127.0.0.1:8200",
        vault_passthrough=True,
    )

    refused = _check(keygate_bin, tmp_path, render_config(**base, tls=tls_settings(pki)))
    assert refused.returncode == 64, describe(refused)
    assert "passthrough" in refused.stderr and "client_ca" in refused.stderr, describe(refused)

    server_tls_only = {"cert": pki.server.cert, "key": pki.server.key}
    accepted = _check(keygate_bin, tmp_path, render_config(**base, tls=server_tls_only))
    assert accepted.returncode == 0, describe(accepted)


@pytest.mark.parametrize(
    "opts, key",
    [
        (lambda pki: {"tls": {"cert": pki.server.cert, "key": pki.server.key, "client_auth": "optional"}},
         "server.tls.client_auth"),
        (lambda pki: {"limits": {"max_header_bytes": 4096}}, "server.limits.max_header_bytes"),
        (lambda pki: {"limits": {"max_connections": 10}, "max_pending_total": 11}, "gate.max_pending_total"),
        (lambda pki: {"certificates": {"demo-app": ["*"]}}, "certificates"),
    ],
    ids=["optional-client-auth-without-client-ca", "tiny-header-limit", "more-holds-than-connections", "star"],
)  # fmt: skip
def test_check_refuses_unsafe_transport_settings(keygate_bin, tmp_path, pki, opts, key):
    state = str(tmp_path / "kg.db")
    config = render_config(listen="127.0.0.1:8740", admin_listen="127.0.0.1:8741", state=state, **opts(pki))

    result = _check(keygate_bin, tmp_path, config)

    assert result.returncode == 64, describe(result)
    assert key in result.stderr, describe(result)


def test_check_names_a_missing_certificate_file(keygate_bin, tmp_path, pki):
    tls = tls_settings(pki, cert=tmp_path / "missing.pem")
    result = _check(
        keygate_bin,
        tmp_path,
        render_config(listen="127.0.0.1:8740", admin_listen="127.0.0.1:8741", state=str(tmp_path / "kg.db"), tls=tls),
    )
    assert result.returncode == 64, describe(result)
    assert "server.tls.cert" in result.stderr and "missing.pem" in result.stderr, describe(result)


# --------------------------------------------------------------------------
# The shipped script and sample config


def make_certs(out: Path) -> None:
    require_executable("openssl", OPENSSL_HINT)
    result = run(["bash", REPO / "scripts" / "make-certs.sh", out], timeout=60)
    assert result.returncode == 0, describe(result)
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        assert (out / name).is_file(), f"make-certs.sh did not write {name}\n{describe(result)}"


def test_make_certs_output_serves_mtls_to_boto3(start_keygate, tmp_path):
    out = tmp_path / "certs"
    make_certs(out)
    kg = start_keygate(
        tls={"cert": out / "server.pem", "key": out / "server.key", "client_ca": out / "ca.pem"},
        certificates={"demo-app": [MAKE_CERTS_SPIFFE]},
        ca_bundle=out / "ca.pem",
    )

    sm = kg.client(DUMMY, client_cert=(str(out / "client.pem"), str(out / "client.key")))

    assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    assert audit_by_certificate(kg, MAKE_CERTS_SPIFFE)["identity"] == "demo-app"


def test_shipped_tls_config_passes_check_once_certs_exist(keygate_bin, tmp_path):
    env = {
        **os.environ,
        "VAULT_ADDR": "https://vault.internal:8200",
        "VAULT_TOKEN": "test-token",
        "KEYGATE_LEGACY_BATCH_SECRET": "legacy-batch-secret",
        "KEYGATE_LEGACY_BATCH_VAULT_TOKEN": "kg-legacy-batch-token",
    }
    config = REPO / "config" / "tls.toml"

    # paths in the config are relative to the working directory: no certs/ yet
    missing = run([keygate_bin, "check", "--config", config], cwd=tmp_path, env=env)
    assert missing.returncode == 64, describe(missing)
    assert "certs/server.pem" in missing.stderr, describe(missing)

    make_certs(tmp_path / "certs")
    result = run([keygate_bin, "check", "--config", config], cwd=tmp_path, env=env)
    assert result.returncode == 0, describe(result)
