"""The bao CLI pointed at keygate (BAO_ADDR / VAULT_ADDR), exactly as a user
runs it: routine KV reads and lists pass, prod reads are held, deletes are
denied with the rule's reason."""

from __future__ import annotations

import json

from harness import PENDING_RE, VAULT_DEMO_DB, VAULT_NO_DELETE_REASON, VAULT_SECRETS, describe


def test_bao_kv_get_of_demo_secret_passes(vault_keygate):
    result = vault_keygate.bao("kv", "get", "-format=json", "secret/demo/db")

    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["data"]["data"] == VAULT_SECRETS[VAULT_DEMO_DB]


def test_bao_kv_list_of_demo_folder_passes(vault_keygate):
    result = vault_keygate.bao("kv", "list", "-format=json", "secret/demo")

    assert result.returncode == 0, describe(result)
    assert "db" in json.loads(result.stdout)


def test_bao_kv_get_of_prod_secret_is_held(quick_vault_keygate):
    result = quick_vault_keygate.bao("kv", "get", "secret/prod/payments/db")

    assert result.returncode != 0, describe(result)
    match = PENDING_RE.search(result.stderr)
    assert match, f"no 'request <id> is awaiting approval' in stderr\n{describe(result)}"
    view = quick_vault_keygate.admin.request(match.group(1))
    assert (view["front"], view["operation"], view["resources"]) == ("vault", "kv.read", ["secret/prod/payments/db"])
    assert "pr0d-pa55" not in result.stdout + result.stderr


def test_bao_kv_delete_is_denied_with_the_rule_reason(vault_keygate, vault_upstream):
    result = vault_keygate.bao("kv", "delete", "secret/demo/db")

    assert result.returncode != 0, describe(result)
    assert VAULT_NO_DELETE_REASON in result.stderr, describe(result)
    assert vault_upstream.read(VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]
