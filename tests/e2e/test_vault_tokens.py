"""Token creation through keygate with hvac: app tokens with allowed policies
are routine, anything else (more privilege, or inheriting keygate's own
policies) is held; token creates are never cached."""

from __future__ import annotations

from harness import VAULT_DEMO_DB, VAULT_SECRETS, expect_vault_held, kv_read, strings_in, vault_client


def test_token_with_app_read_policy_passes_and_works_upstream(vault_keygate, vault_upstream):
    auth = vault_keygate.vault().auth.token.create(policies=["app-read"], ttl="1h")["auth"]

    assert "app-read" in auth["policies"]
    assert "admin" not in auth["policies"]
    # a real OpenBao token, usable directly against the upstream
    direct = vault_client(vault_upstream.url, auth["client_token"])
    assert kv_read(direct, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_token_creates_are_never_cached(vault_keygate):
    vault = vault_keygate.vault()

    first = vault.auth.token.create(policies=["app-read"], ttl="1h")["auth"]["client_token"]
    second = vault.auth.token.create(policies=["app-read"], ttl="1h")["auth"]["client_token"]

    assert first != second


def test_token_with_admin_policy_is_held(quick_vault_keygate):
    request_id = expect_vault_held(
        lambda: quick_vault_keygate.vault().auth.token.create(policies=["admin"], ttl="1h")
    )

    view = quick_vault_keygate.admin.request(request_id)
    assert (view["front"], view["operation"]) == ("vault", "token.create")
    assert view["rule"] == "vault-token-hold"
    assert "admin" in strings_in(view["parameters"]), view["parameters"]


def test_token_without_policies_is_held(quick_vault_keygate):
    # no policies named: the token would inherit keygate's own (root) policies
    request_id = expect_vault_held(lambda: quick_vault_keygate.vault().auth.token.create(ttl="1h"))

    assert quick_vault_keygate.admin.request(request_id)["rule"] == "vault-token-hold"


def test_held_admin_token_is_created_once_approved_while_hvac_waits(vault_keygate, background):
    waiting = background.submit(vault_keygate.vault().auth.token.create, policies=["admin"], ttl="1h")
    pending = vault_keygate.admin.wait_for_pending(operation="token.create")

    vault_keygate.admin.approve(pending["id"], comment="break-glass, INC-9")

    auth = waiting.result(timeout=30)["auth"]
    assert "admin" in auth["policies"]
