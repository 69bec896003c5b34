"""Vault KV v2 through keygate with hvac: routine reads and lists pass straight
through, writes only where a rule allows (and they invalidate the cache),
deletes are denied with the rule's reason, unknown tokens get Vault's 403."""

from __future__ import annotations

import uuid

import pytest
from harness import (
    ALICE,
    OTHER_APP_TOKEN,
    VAULT_DEMO_DB,
    VAULT_KV_MOUNT,
    VAULT_NO_DELETE_REASON,
    VAULT_ROOT_TOKEN,
    VAULT_SECRETS,
    assert_vault_error,
    expect_vault_forbidden,
    kv_read,
    raw_vault_call,
)

DEMO_DB_DATA_PATH = "/v1/secret/data/demo/db"


def test_kv_read_of_demo_secret_returns_upstream_answer(vault_keygate, vault_upstream):
    via_keygate = vault_keygate.vault().secrets.kv.v2.read_secret_version(
        path=VAULT_DEMO_DB, mount_point=VAULT_KV_MOUNT, raise_on_deleted_version=True
    )
    direct = vault_upstream.client().secrets.kv.v2.read_secret_version(
        path=VAULT_DEMO_DB, mount_point=VAULT_KV_MOUNT, raise_on_deleted_version=True
    )

    assert via_keygate["data"]["data"] == VAULT_SECRETS[VAULT_DEMO_DB]
    assert via_keygate["data"] == direct["data"]  # metadata (version, times) relayed unchanged


def test_kv_list_of_demo_folder_passes(vault_keygate):
    listed = vault_keygate.vault().secrets.kv.v2.list_secrets(path="demo", mount_point=VAULT_KV_MOUNT)

    assert "db" in listed["data"]["keys"]


@pytest.mark.parametrize(
    "method, path", [("LIST", "/v1/secret/metadata/demo"), ("GET", "/v1/secret/metadata/demo?list=true")],
    ids=["LIST-verb", "list-query"],
)  # fmt: skip
def test_kv_list_works_with_list_verb_and_list_query(vault_keygate, method, path):
    resp = vault_keygate.vault_raw(method, path)

    assert resp.status == 200, resp.text[:500]
    assert "db" in resp.json()["data"]["keys"]


def test_bearer_authorization_works_like_x_vault_token(vault_keygate):
    resp = vault_keygate.vault_raw(
        "GET", DEMO_DB_DATA_PATH, token=None, headers={"Authorization": "Bearer kg-demo-app-token"}
    )

    assert resp.status == 200, resp.text[:200]
    assert resp.json()["data"]["data"] == VAULT_SECRETS[VAULT_DEMO_DB]


def test_kv_read_is_served_from_cache_within_ttl(vault_keygate, vault_upstream):
    vault = vault_keygate.vault()
    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]

    changed = {"username": "app", "password": "changed-behind-keygates-back"}
    vault_upstream.client().secrets.kv.v2.create_or_update_secret(
        path=VAULT_DEMO_DB, secret=changed, mount_point=VAULT_KV_MOUNT
    )

    # cache.ttl is 30s: keygate still answers from its cache
    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_write_to_demo_then_read_back_sees_the_new_value(vault_keygate, vault_upstream):
    vault = vault_keygate.vault()
    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]  # now cached
    rotated = {"username": "app", "password": "rotated-through-keygate"}

    vault.secrets.kv.v2.create_or_update_secret(path=VAULT_DEMO_DB, secret=rotated, mount_point=VAULT_KV_MOUNT)

    assert vault_upstream.read(VAULT_DEMO_DB) == rotated
    assert kv_read(vault, VAULT_DEMO_DB) == rotated  # the write invalidated the cached read


def test_write_where_no_rule_allows_is_denied_by_default(vault_keygate, vault_upstream):
    path = f"team/{uuid.uuid4().hex}"

    expect_vault_forbidden(
        lambda: vault_keygate.vault().secrets.kv.v2.create_or_update_secret(
            path=path, secret={"k": "v"}, mount_point=VAULT_KV_MOUNT
        )
    )

    assert vault_upstream.read(path) is None  # nothing reached the upstream


def test_delete_is_denied_with_the_rule_reason(vault_keygate, vault_upstream):
    vault = vault_keygate.vault()

    expect_vault_forbidden(
        lambda: vault.secrets.kv.v2.delete_latest_version_of_secret(path=VAULT_DEMO_DB, mount_point=VAULT_KV_MOUNT),
        VAULT_NO_DELETE_REASON,
    )

    assert vault_upstream.read(VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_policy_denial_is_a_vault_error_body_with_the_reason(vault_keygate):
    resp = vault_keygate.vault_raw("DELETE", DEMO_DB_DATA_PATH)

    assert_vault_error(resp, 403, VAULT_NO_DELETE_REASON)


@pytest.mark.parametrize(
    "token", ["kg-not-a-token", VAULT_ROOT_TOKEN, ALICE], ids=["unknown", "upstream-root-token", "approver-token"]
)
def test_token_keygate_did_not_issue_gets_403_permission_denied(vault_keygate, token):
    resp = vault_keygate.vault_raw("GET", DEMO_DB_DATA_PATH, token=token)

    assert_vault_error(resp, 403)
    assert resp.json() == {"errors": ["permission denied"]}


def test_missing_token_gets_403(vault_keygate):
    resp = vault_keygate.vault_raw("GET", DEMO_DB_DATA_PATH, token=None)

    assert_vault_error(resp, 403)


def test_unknown_token_with_hvac_raises_forbidden(vault_keygate):
    expect_vault_forbidden(lambda: kv_read(vault_keygate.vault("kg-not-a-token"), VAULT_DEMO_DB), "permission denied")


def test_identity_without_a_matching_rule_is_denied_by_default(vault_keygate):
    # other-app has a vault token but no rule for secret/demo/*
    expect_vault_forbidden(lambda: kv_read(vault_keygate.vault(OTHER_APP_TOKEN), VAULT_DEMO_DB))


def test_upstream_not_found_is_relayed_unchanged(vault_keygate, vault_upstream):
    path = "/v1/secret/data/demo/does-not-exist"
    via_keygate = vault_keygate.vault_raw("GET", path)
    direct = raw_vault_call(vault_upstream.url, "GET", path, token=VAULT_ROOT_TOKEN)

    assert (via_keygate.status, via_keygate.json()) == (direct.status, direct.json()) == (404, {"errors": []})


def test_mount_preflight_of_the_bao_cli_is_answered_as_kv_v2(vault_keygate):
    resp = vault_keygate.vault_raw("GET", "/v1/sys/internal/ui/mounts/secret/demo/db")

    assert resp.status == 200, resp.text[:500]
    data = resp.json()["data"]
    assert data["path"] == "secret/"
    assert data["type"] == "kv"
    assert data["options"]["version"] == "2"
