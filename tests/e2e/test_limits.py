"""Listener hardening ([server.limits]) and the held-request caps, seen from
the wire: slow and oversized requests, the connection cap, X-Forwarded-For,
gate.max_pending_per_identity / max_pending_total, and shutdown while
clients wait for an approval."""

from __future__ import annotations

import json
import select
import signal
import socket
import time

import hvac
from harness import (
    DEMO_APP,
    OTHER_APP,
    PROD_API,
    PROD_DB,
    SECRETS,
    VAULT_KV_MOUNT,
    VAULT_PROD_DB,
    Keygate,
    assert_aws_error,
    assert_vault_error,
    aws_request_headers,
    client_error,
    describe,
    http_connection,
    kv_read,
    raw_aws_call,
    raw_vault_call,
    require_executable,
    run,
    vault_error,
    vault_message,
    wait_until,
)

DEMO_SECRET = "demo/db/password"
GET_DEMO = json.dumps({"SecretId": DEMO_SECRET})
# boto3 must not hide a 429/503 behind its own retries
NO_RETRIES = {"total_max_attempts": 1}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get_demo(kg: Keygate, **kw):
    return raw_aws_call(kg.endpoint, "GetSecretValue", GET_DEMO, **kw)


def wait_for_close(sock: socket.socket, timeout: float, drip: bytes = b"") -> tuple[float, bytes]:
    """Read until the server closes `sock` (EOF or reset); meanwhile send
    `drip` one byte every 0.5 s. Returns (seconds until closed, bytes read)."""
    started = time.monotonic()
    received = b""
    pending = list(drip)
    while time.monotonic() - started < timeout:
        readable, _, _ = select.select([sock], [], [], 0.5)
        try:
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    return time.monotonic() - started, received
                received += chunk
            elif pending:
                sock.send(bytes([pending.pop(0)]))
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started, received
    raise AssertionError(f"the server kept the connection open for {timeout}s; it sent {received[:200]!r}")


# --------------------------------------------------------------------------
# Slow and oversized requests


def test_slowloris_request_head_is_cut_off_after_header_read_timeout(start_keygate):
    kg = start_keygate(limits={"header_read_timeout": "1s"})
    head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{kg.listen_port}\r\nX-Slow: " + "a" * 40

    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        sock.send(head[:1].encode())
        elapsed, received = wait_for_close(sock, timeout=10, drip=head[1:].encode())

    assert elapsed < 5, f"slowloris connection lived {elapsed:.1f}s with header_read_timeout = 1s"
    assert elapsed > 0.5, f"closed after {elapsed:.2f}s: before the timeout, so not by it"
    assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:200]
    # the listener still serves others
    assert get_demo(kg).status == 200


def test_a_client_that_connects_and_sends_nothing_is_closed_after_header_read_timeout(start_keygate):
    kg = start_keygate(limits={"header_read_timeout": "1s"})

    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        elapsed, received = wait_for_close(sock, timeout=10)

    assert 0.5 < elapsed < 5, f"a silent client was closed after {elapsed:.2f}s with header_read_timeout = 1s"
    assert received == b"", received[:200]
    assert get_demo(kg).status == 200


def signed_demo_request(kg: Keygate) -> bytes:
    headers = aws_request_headers(kg.endpoint, "GetSecretValue", GET_DEMO)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{kg.listen_port}\r\n{head}"
        f"Content-Length: {len(GET_DEMO)}\r\n\r\n{GET_DEMO}"
    ).encode()


def test_an_idle_keep_alive_connection_is_closed_after_header_read_timeout(start_keygate):
    """HTTP/1: the wait for the next request head is bounded like the head
    itself (keygate enforces it, not hyper's per-request timer)."""
    kg = start_keygate(limits={"header_read_timeout": "1s"})

    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        sock.sendall(signed_demo_request(kg))
        elapsed, received = wait_for_close(sock, timeout=10)

    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert 0.5 < elapsed < 5, f"an idle keep-alive connection lived {elapsed:.2f}s with header_read_timeout = 1s"


def test_a_request_in_flight_longer_than_header_read_timeout_is_answered(start_keygate):
    """The head arrived: only request_timeout bounds the rest. A body that
    takes longer than header_read_timeout must not get its connection cut."""
    kg = start_keygate(limits={"header_read_timeout": "1s"})
    request = signed_demo_request(kg)
    head, body = request[: -len(GET_DEMO)], request[-len(GET_DEMO) :]

    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        sock.sendall(head)
        time.sleep(2.5)
        sock.sendall(body)
        sock.settimeout(10)
        answer = sock.recv(65536)
        # Still a keep-alive connection: a second request on it is served.
        sock.sendall(signed_demo_request(kg))
        second = sock.recv(65536)

    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert second.startswith(b"HTTP/1.1 200"), second[:300]


def test_plaintext_listener_speaks_http2_with_prior_knowledge_and_http1(start_keygate):
    """Each plaintext connection is HTTP/2 if it opens with the HTTP/2
    preface (h2c prior knowledge) and HTTP/1.1 otherwise."""
    curl = require_executable("curl", "install curl (`apt-get install curl`)")
    kg = start_keygate()
    for http_flag, expected_version in (("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")):
        headers = aws_request_headers(kg.endpoint, "GetSecretValue", GET_DEMO)
        argv = [curl, "-sS", http_flag, "--data", GET_DEMO, "-w", "\n%{http_code} %{http_version}"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        result = run(argv + [kg.endpoint + "/"], timeout=30)
        assert result.returncode == 0, describe(result)
        body, _, status_line = result.stdout.rpartition("\n")
        assert status_line == f"200 {expected_version}", describe(result)
        assert json.loads(body)["SecretString"] == SECRETS[DEMO_SECRET]


def test_tls_handshake_that_never_starts_is_cut_off_after_handshake_timeout(start_keygate, pki):
    kg = start_keygate(
        tls={"cert": pki.server.cert, "key": pki.server.key}, ca_bundle=pki.ca, limits={"handshake_timeout": "1s"}
    )

    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        elapsed, received = wait_for_close(sock, timeout=10)

    assert 0.5 < elapsed < 5, f"a silent TLS client was closed after {elapsed:.2f}s with handshake_timeout = 1s"
    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]


def test_oversized_request_head_gets_431(start_keygate):
    kg = start_keygate(limits={"max_header_bytes": 8192})

    fits = get_demo(kg, headers={"X-Padding": "a" * 4000})
    assert fits.status == 200, fits.text[:300]

    # the whole request in one write, then read: http.client would still be
    # writing when keygate answers and closes
    padding = "a" * 12000
    request = f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nX-Padding: {padding}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", kg.listen_port), timeout=10) as sock:
        sock.sendall(request.encode())
        _elapsed, answer = wait_for_close(sock, timeout=10)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 431"), f"expected 431 for a 12 KB head, got {answer[:300]!r}"


def test_oversized_body_gets_413_in_the_aws_error_shape(start_keygate):
    kg = start_keygate(max_body_bytes=2048)
    body = json.dumps({"SecretId": "demo/big", "SecretString": "x" * 4096})

    resp = raw_aws_call(kg.endpoint, "PutSecretValue", body)

    assert_aws_error(resp, "RequestEntityTooLargeException", status=413)


# --------------------------------------------------------------------------
# Connection cap


def test_connection_cap_answers_one_native_503_then_recovers(start_keygate):
    cap = 3
    # (gate.max_pending_total may not exceed max_connections: each hold keeps a connection)
    kg = start_keygate(limits={"max_connections": cap}, max_pending_total=cap)
    idle = []
    try:
        for _ in range(cap):  # keep-alive connections, idle after one request each
            conn = http_connection(kg.endpoint, timeout=10)
            headers = aws_request_headers(kg.endpoint, "GetSecretValue", GET_DEMO)
            conn.request("POST", "/", body=GET_DEMO, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and not resp.will_close
            idle.append(conn)

        over = get_demo(kg)
        assert_aws_error(over, "ServiceUnavailable", status=503)
        assert over.headers.get("connection", "").lower() == "close", over.headers
        vault = raw_vault_call(kg.endpoint, "GET", f"/v1/{VAULT_KV_MOUNT}/data/demo/db")
        assert_vault_error(vault, 503)
        assert vault.headers.get("connection", "").lower() == "close", vault.headers
    finally:
        for conn in idle:
            conn.close()

    wait_until(lambda: get_demo(kg).status == 200, timeout=5, what="a request to pass once the idle connections closed")
    for _ in range(cap + 2):  # one after another: never more than one open
        assert get_demo(kg).status == 200


# --------------------------------------------------------------------------
# Held-request caps


def _deny_all_pending(kg: Keygate) -> None:
    for request in kg.admin.requests("pending"):
        kg.admin.deny(request["id"], reason="test cleanup")


def test_per_identity_held_cap_gets_429_throttling(start_keygate, background):
    kg = start_keygate(max_pending=2, hold_window="20s")
    held = [background.submit(kg.client().get_secret_value, SecretId=s) for s in (PROD_DB, PROD_API)]
    for secret in (PROD_DB, PROD_API):
        kg.admin.wait_for_pending(resource=secret)
    try:
        code, message, status = client_error(
            lambda: kg.client(retries=NO_RETRIES).get_secret_value(SecretId="prod/payments/third")
        )
        assert (code, status) == ("ThrottlingException", 429), (code, status, message)
        assert "2" in message, message
    finally:
        _deny_all_pending(kg)
    for future in held:
        assert client_error(lambda: future.result(timeout=30))[0] == "AccessDeniedException"


def test_per_identity_held_cap_on_the_vault_front_gets_429(start_vault_keygate, background):
    kg = start_vault_keygate(max_pending=1, hold_window="20s")
    held = background.submit(kv_read, kg.vault(), VAULT_PROD_DB)
    kg.admin.wait_for_pending(operation="kv.read")
    try:
        resp = raw_vault_call(kg.endpoint, "GET", f"/v1/{VAULT_KV_MOUNT}/data/prod/payments/other")
        assert_vault_error(resp, 429)
    finally:
        _deny_all_pending(kg)
    assert isinstance(vault_error(lambda: held.result(timeout=30)), hvac.exceptions.Forbidden)


def test_global_held_cap_gets_503(start_keygate, background):
    kg = start_keygate(max_pending_total=2, hold_window="20s")
    held = [
        background.submit(kg.client(DEMO_APP).get_secret_value, SecretId=PROD_DB),
        background.submit(kg.client(OTHER_APP).get_secret_value, SecretId=PROD_DB),
    ]
    kg.admin.wait_for_pending(identity=DEMO_APP.name, resource=PROD_DB)
    kg.admin.wait_for_pending(identity=OTHER_APP.name, resource=PROD_DB)
    try:
        code, message, status = client_error(
            lambda: kg.client(retries=NO_RETRIES).get_secret_value(SecretId=PROD_API)
        )
        assert (code, status) == ("ServiceUnavailable", 503), (code, status, message)
        assert len(kg.admin.requests("pending")) == 2
    finally:
        _deny_all_pending(kg)
    for future in held:
        assert client_error(lambda: future.result(timeout=30))[0] == "AccessDeniedException"


# --------------------------------------------------------------------------
# X-Forwarded-For: the audit record's client address


def _client_of_last_read(kg: Keygate) -> str:
    records = [e for e in kg.admin.audit() if e.get("operation") == "GetSecretValue"]
    assert records, "no audit record of the read"
    assert "client" in records[-1], f"audit records carry the client address: {records[-1]}"
    return records[-1]["client"]


def test_x_forwarded_for_is_ignored_from_untrusted_peers(start_keygate):
    kg = start_keygate()
    assert get_demo(kg, headers={"X-Forwarded-For": "203.0.113.7"}).status == 200
    assert _client_of_last_read(kg) == "127.0.0.1"


def test_x_forwarded_for_is_believed_from_a_trusted_proxy(start_keygate):
    kg = start_keygate(limits={"trusted_proxies": ["127.0.0.1/32"]})
    assert get_demo(kg, headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}).status == 200
    assert _client_of_last_read(kg) == "203.0.113.7", "the right-most hop not itself trusted"

    assert get_demo(kg).status == 200
    assert _client_of_last_read(kg) == "127.0.0.1", "no header: the socket peer"


# --------------------------------------------------------------------------
# Shutdown while clients wait for an approval


def test_shutdown_answers_waiting_aws_client_with_503_and_keeps_the_request_pending(start_keygate, background):
    kg = start_keygate(hold_window="20s")
    waiting = background.submit(kg.client(retries=NO_RETRIES).get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)

    kg.proc.send_signal(signal.SIGTERM)

    code, message, status = client_error(lambda: waiting.result(timeout=15))
    assert (code, status) == ("ServiceUnavailable", 503), (code, status, message)
    assert "shutting down" in message and pending["id"] in message, message
    kg.proc.wait(15)

    kg.start()
    assert kg.admin.request(pending["id"])["state"] == "pending"
    kg.admin.approve(pending["id"])
    sm = kg.client()
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB], "the retry uses the grant"


def test_shutdown_answers_waiting_vault_client_with_503(start_vault_keygate, background):
    kg = start_vault_keygate(hold_window="20s")
    waiting = background.submit(kv_read, kg.vault(), VAULT_PROD_DB)
    pending = kg.admin.wait_for_pending(operation="kv.read")

    kg.proc.send_signal(signal.SIGTERM)

    exc = vault_error(lambda: waiting.result(timeout=15))
    assert isinstance(exc, hvac.exceptions.VaultDown), f"expected 503, got {type(exc).__name__}: {vault_message(exc)}"
    assert "shutting down" in vault_message(exc) and pending["id"] in vault_message(exc)
    kg.proc.wait(15)
