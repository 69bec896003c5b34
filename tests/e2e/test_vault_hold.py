"""Held Vault requests: an approval while hvac waits, a denial, the retry
path after the hold window, the per-identity cap, redaction of held writes,
and response wrapping of an approved read."""

from __future__ import annotations

import json
import uuid

import hvac
from harness import (
    OTHER_APP_TOKEN,
    PENDING_RE,
    VAULT_DEMO_DB,
    VAULT_KV_MOUNT,
    VAULT_PROD_DB,
    VAULT_SECRETS,
    assert_vault_error,
    expect_vault_forbidden,
    expect_vault_held,
    issue_cert,
    kv_read,
    strings_in,
    vault_error,
    vault_message,
)

PROD_RESOURCE = "secret/prod/payments/db"


def wait_for_prod_read(kg) -> dict:
    return kg.admin.wait_for_pending(operation="kv.read", resource=PROD_RESOURCE)


def test_held_prod_read_returns_value_once_approved_while_hvac_waits(vault_keygate, background):
    waiting = background.submit(kv_read, vault_keygate.vault(), VAULT_PROD_DB)

    pending = wait_for_prod_read(vault_keygate)
    assert not waiting.done(), "the held call must wait for the approval"
    assert pending["identity"] == "demo-app"
    assert pending["front"] == "vault"
    assert pending["operation"] == "kv.read"
    assert pending["resources"] == [PROD_RESOURCE]
    assert pending["rule"] == "vault-prod-read"
    assert pending["reasons"], "a hold names why it was held"
    assert pending["approver_group"] == "secops"

    vault_keygate.admin.approve(pending["id"], comment="incident 42")

    assert waiting.result(timeout=30) == VAULT_SECRETS[VAULT_PROD_DB]


def test_held_request_parameters_show_method_and_path(quick_vault_keygate):
    request_id = expect_vault_held(lambda: kv_read(quick_vault_keygate.vault(), VAULT_PROD_DB))

    parameters = quick_vault_keygate.admin.request(request_id)["parameters"]

    strings = strings_in(parameters)
    assert "GET" in [s.upper() for s in strings], f"no method in parameters {parameters}"
    assert any("prod/payments/db" in s for s in strings), f"no path in parameters {parameters}"


def test_held_prod_read_denied_by_approver_hvac_sees_the_reason(vault_keygate, background):
    waiting = background.submit(kv_read, vault_keygate.vault(), VAULT_PROD_DB)
    pending = wait_for_prod_read(vault_keygate)

    denied = vault_keygate.admin.deny(pending["id"], reason="not during the freeze")

    expect_vault_forbidden(lambda: waiting.result(timeout=30), "was denied by alice: not during the freeze")
    assert denied["state"] == "denied"


def test_timed_out_hold_carries_request_id_and_retry_after_approval_succeeds(quick_vault_keygate):
    vault = quick_vault_keygate.vault()
    request_id = expect_vault_held(lambda: kv_read(vault, VAULT_PROD_DB))
    view = quick_vault_keygate.admin.request(request_id)
    assert (view["state"], view["front"], view["operation"]) == ("pending", "vault", "kv.read")

    quick_vault_keygate.admin.approve(request_id)

    assert kv_read(vault, VAULT_PROD_DB) == VAULT_SECRETS[VAULT_PROD_DB]


def test_too_many_pending_requests_get_429(start_vault_keygate):
    kg = start_vault_keygate(hold_window="1s", max_pending=1)
    expect_vault_held(lambda: kv_read(kg.vault(), VAULT_PROD_DB))

    exc = vault_error(lambda: issue_cert(kg.vault(), "*.svc.cluster.local"))

    assert isinstance(exc, hvac.exceptions.RateLimitExceeded), f"expected 429, got {type(exc).__name__}: {exc}"
    assert len(kg.admin.requests("pending")) == 1


def test_held_kv_write_is_shown_without_the_written_values(quick_vault_keygate, vault_upstream):
    written = f"held-write-value-{uuid.uuid4().hex[:8]}"
    vault = quick_vault_keygate.vault()

    request_id = expect_vault_held(
        lambda: vault.secrets.kv.v2.create_or_update_secret(
            path=VAULT_PROD_DB, secret={"username": "payments", "password": written}, mount_point=VAULT_KV_MOUNT
        )
    )

    view = quick_vault_keygate.admin.request(request_id)
    assert view["operation"] == "kv.write"
    assert view["resources"] == [PROD_RESOURCE]
    assert view["rule"] == "vault-prod-write"
    assert written not in json.dumps(view), f"written value in the approver's view: {view['parameters']}"
    assert vault_upstream.read(VAULT_PROD_DB) == VAULT_SECRETS[VAULT_PROD_DB]  # not executed


def test_approved_held_read_with_wrap_ttl_returns_wrapped_answer_that_unwraps(vault_keygate, background):
    vault = vault_keygate.vault()
    waiting = background.submit(vault.read, "secret/data/prod/payments/db", wrap_ttl="60s")
    pending = wait_for_prod_read(vault_keygate)

    vault_keygate.admin.approve(pending["id"])

    wrapped = waiting.result(timeout=30)
    assert wrapped["wrap_info"] and wrapped["wrap_info"]["token"], f"no wrap_info in {wrapped}"
    assert not wrapped.get("data"), "a wrapped answer carries no data"
    assert "pr0d-pa55" not in json.dumps(wrapped)
    unwrapped = vault.sys.unwrap(token=wrapped["wrap_info"]["token"])
    assert unwrapped["data"]["data"] == VAULT_SECRETS[VAULT_PROD_DB]


def test_wrapping_token_unwraps_through_keygate(vault_keygate):
    vault = vault_keygate.vault()
    wrapped = vault.read("secret/data/demo/db", wrap_ttl="60s")
    assert wrapped["wrap_info"], f"no wrap_info in {wrapped}"

    try:
        unwrapped = vault.sys.unwrap(token=wrapped["wrap_info"]["token"])
    except hvac.exceptions.VaultError as exc:
        raise AssertionError(f"unwrap through keygate failed: {type(exc).__name__}: {vault_message(exc)}") from None

    assert unwrapped["data"]["data"] == VAULT_SECRETS[VAULT_DEMO_DB]


def test_grant_is_not_usable_by_another_identity(quick_vault_keygate):
    request_id = expect_vault_held(lambda: kv_read(quick_vault_keygate.vault(), VAULT_PROD_DB))
    quick_vault_keygate.admin.approve(request_id)

    other_id = expect_vault_held(lambda: kv_read(quick_vault_keygate.vault(OTHER_APP_TOKEN), VAULT_PROD_DB))

    assert other_id != request_id
    assert quick_vault_keygate.admin.request(other_id)["identity"] == "other-app"
    # demo-app's grant is still there for demo-app
    assert kv_read(quick_vault_keygate.vault(), VAULT_PROD_DB) == VAULT_SECRETS[VAULT_PROD_DB]


def test_justification_header_is_recorded(quick_vault_keygate):
    resp = quick_vault_keygate.vault_raw(
        "GET", "/v1/secret/data/prod/payments/db", headers={"X-Keygate-Justification": "INC-1234 payments outage"}
    )
    message = assert_vault_error(resp, 403)
    match = PENDING_RE.search(message)
    assert match, message

    assert quick_vault_keygate.admin.request(match.group(1))["justification"] == "INC-1234 payments outage"
