"""Held requests: waiting for approval, denial, the retry path, grant binding."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import (
    DEMO_APP,
    DEMO_SECRET_IDS,
    OTHER_APP,
    PROD_API,
    PROD_DB,
    SECRETS,
    client_error,
    describe,
    expect_held,
)


@pytest.fixture
def background():
    """Run a client call in a thread (it blocks while keygate holds it)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def events_for(admin, request_id: str) -> list[str]:
    return [e["kind"] for e in admin.audit() if e["request_id"] == request_id]


def test_held_prod_read_returns_value_once_approved_while_client_waits(keygate, background):
    waiting = background.submit(keygate.client().get_secret_value, SecretId=PROD_DB)

    pending = keygate.admin.wait_for_pending(resource=PROD_DB)
    assert not waiting.done(), "the held call must wait for the approval"
    assert pending["identity"] == "demo-app"
    assert pending["front"] == "aws"
    assert pending["resources"] == [PROD_DB]
    assert pending["state"] == "pending"
    assert pending["rule"] == "prod-read"
    assert pending["reasons"], "a hold names why it was held"
    assert pending["approver_group"] == "secops"
    assert pending["required_approvals"] == 1
    assert pending["justification"] is None
    assert pending["denial"] is None

    approved = keygate.admin.approve(pending["id"], comment="incident 42")

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    assert approved["state"] == "approved"
    assert [(a["approver"], a["comment"]) for a in approved["approvals"]] == [("alice", "incident 42")]
    kinds = events_for(keygate.admin, pending["id"])
    for kind in ("request.held", "request.approved", "request.released"):
        assert kind in kinds, f"{kind} missing from audit events {kinds}"


def test_held_answer_is_written_off_hyper_and_the_client_reconnects(keygate, background):
    """A held HTTP/1 request is parked off its hyper connection: keygate
    writes the answer itself with `connection: close`, and the same client's
    next call opens a new connection and works."""
    client = keygate.client()
    seen: list[dict] = []
    client.meta.events.register(
        "after-call.secrets-manager.GetSecretValue",
        lambda http_response, **_: seen.append(dict(http_response.headers)),
    )
    waiting = background.submit(client.get_secret_value, SecretId=PROD_DB)
    pending = keygate.admin.wait_for_pending(resource=PROD_DB)
    keygate.admin.approve(pending["id"], comment="parked")

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    held_headers = {k.lower(): v for k, v in seen[0].items()}
    assert held_headers["connection"] == "close"
    assert held_headers["content-type"] == "application/x-amz-json-1.1"
    assert held_headers["x-amzn-requestid"]
    assert "date" in held_headers

    assert client.get_secret_value(SecretId=DEMO_SECRET_IDS[0])["SecretString"] == SECRETS[DEMO_SECRET_IDS[0]]
    assert "connection" not in {k.lower() for k in seen[1]}, "ordinary answers keep the connection"


def test_client_that_gives_up_on_a_parked_request_leaves_it_pending(keygate):
    """A client that closes its connection while parked ends its wait; the
    request stays pending, and a retry after approval gets the value."""
    impatient = keygate.client(read_timeout=1)
    with pytest.raises(Exception, match="(?i)read timeout"):
        impatient.get_secret_value(SecretId=PROD_API)
    pending = keygate.admin.wait_for_pending(resource=PROD_API)
    assert pending["state"] == "pending"
    keygate.admin.approve(pending["id"], comment="after the client left")

    assert keygate.client().get_secret_value(SecretId=PROD_API)["SecretString"] == SECRETS[PROD_API]


def test_held_prod_read_approved_with_keygate_cli(keygate, background):
    waiting = background.submit(keygate.client().get_secret_value, SecretId=PROD_DB)
    keygate.admin.wait_for_pending(resource=PROD_DB)

    listed = keygate.cli("requests", "list", "--state", "pending", "--json")
    assert listed.returncode == 0, describe(listed)
    parsed = json.loads(listed.stdout)
    requests = parsed["requests"] if isinstance(parsed, dict) else parsed
    [request] = [r for r in requests if r["resources"] == [PROD_DB]]

    shown = keygate.cli("requests", "show", request["id"])
    assert shown.returncode == 0, describe(shown)
    assert request["id"] in shown.stdout

    approved = keygate.cli("requests", "approve", request["id"], "--comment", "approved from the CLI")
    assert approved.returncode == 0, describe(approved)

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    view = keygate.admin.request(request["id"])
    assert view["state"] == "approved"
    assert view["approvals"][0]["approver"] == "alice"
    assert view["approvals"][0]["comment"] == "approved from the CLI"


def test_cli_flags_work_instead_of_env(keygate):
    listed = keygate.cli("requests", "list", "--json", use_env=False)
    assert listed.returncode == 0, describe(listed)
    parsed = json.loads(listed.stdout)
    assert (parsed["requests"] if isinstance(parsed, dict) else parsed) == []


def test_cli_denies_with_reason(quick_keygate):
    request_id = expect_held(lambda: quick_keygate.client().get_secret_value(SecretId=PROD_DB))

    denied = quick_keygate.cli("requests", "deny", request_id, "--reason", "not during the freeze")
    assert denied.returncode == 0, describe(denied)

    code, message, _ = client_error(lambda: quick_keygate.client().get_secret_value(SecretId=PROD_DB))
    assert code == "AccessDeniedException"
    assert "was denied by alice: not during the freeze" in message


def test_cli_failure_exits_1_with_error_message(keygate):
    result = keygate.cli("requests", "approve", "00000000-0000-4000-8000-000000000000")
    assert result.returncode == 1, describe(result)
    assert result.stderr.startswith("error:") or "\nerror:" in result.stderr, describe(result)


def test_bulk_export_held_then_denied_client_sees_reason(keygate, background):
    waiting = background.submit(keygate.client().batch_get_secret_value, SecretIdList=DEMO_SECRET_IDS)

    pending = keygate.admin.wait_for_pending(operation="BatchGetSecretValue")
    assert sorted(pending["resources"]) == sorted(DEMO_SECRET_IDS)
    assert pending["rule"] == "bulk-export"

    denied = keygate.admin.deny(pending["id"], reason="bulk export needs a change ticket")

    code, message, status = client_error(lambda: waiting.result(timeout=30))
    assert (code, status) == ("AccessDeniedException", 400)
    assert "was denied by alice: bulk export needs a change ticket" in message
    assert denied["state"] == "denied"
    assert denied["denial"]["by"] == "alice"
    assert denied["denial"]["reason"] == "bulk export needs a change ticket"
    assert "request.rejected" in events_for(keygate.admin, pending["id"])


def test_timed_out_hold_carries_request_id_and_retry_after_approval_succeeds_once(quick_keygate):
    sm = quick_keygate.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    assert quick_keygate.admin.request(request_id)["state"] == "pending"

    approved = quick_keygate.admin.approve(request_id)
    assert approved["grant"] is not None and approved["grant"]["uses_left"] == 1

    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    assert "grant.used" in events_for(quick_keygate.admin, request_id)

    # grant "once": the next identical call is a new request, held again
    next_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    assert next_id != request_id


def test_grant_is_not_usable_by_another_identity(quick_keygate):
    request_id = expect_held(lambda: quick_keygate.client(DEMO_APP).get_secret_value(SecretId=PROD_DB))
    quick_keygate.admin.approve(request_id)

    other_id = expect_held(lambda: quick_keygate.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))

    assert other_id != request_id
    assert quick_keygate.admin.request(other_id)["identity"] == "other-app"
    # demo-app's grant is still there for demo-app
    assert quick_keygate.client(DEMO_APP).get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]


def test_grant_is_not_usable_for_another_secret(quick_keygate):
    sm = quick_keygate.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    quick_keygate.admin.approve(request_id)

    other_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_API))

    assert other_id != request_id
    assert quick_keygate.admin.request(other_id)["resources"] == [PROD_API]
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]


def test_identical_pending_requests_merge_into_one(quick_keygate):
    sm = quick_keygate.client()
    first = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    second = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))

    assert first == second
    assert [r["id"] for r in quick_keygate.admin.requests("pending")] == [first]


def test_justification_header_is_recorded(quick_keygate):
    sm = quick_keygate.client()

    def add_justification(request, **_):
        request.headers["X-Keygate-Justification"] = "INC-1234 payments outage"

    sm.meta.events.register("before-sign.secrets-manager.GetSecretValue", add_justification)
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))

    assert quick_keygate.admin.request(request_id)["justification"] == "INC-1234 payments outage"
