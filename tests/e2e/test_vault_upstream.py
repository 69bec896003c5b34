"""The Vault upstream going away: a fast 502 in Vault's error format, normal
service once it is back; the mount preflight never needs the upstream.
Each test here has an OpenBao of its own."""

from __future__ import annotations

import time

from harness import VAULT_DEMO_DB, VAULT_SECRETS, assert_vault_error, free_port, kv_read

UNAVAILABLE = "keygate: upstream Vault unavailable"


def test_stopped_upstream_gives_502_quickly(start_openbao, start_vault_keygate):
    bao = start_openbao()
    kg = start_vault_keygate(vault_addr=bao.url, cache_ttl="0s")
    assert kv_read(kg.vault(), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]

    bao.stop()
    started = time.monotonic()
    resp = kg.vault_raw("GET", "/v1/secret/data/demo/db")
    elapsed = time.monotonic() - started

    assert_vault_error(resp, 502, UNAVAILABLE)
    assert elapsed < 3, f"502 took {elapsed:.1f}s; an unreachable upstream must be reported at once"


def test_service_resumes_after_upstream_restart(start_openbao, start_vault_keygate):
    bao = start_openbao()
    kg = start_vault_keygate(vault_addr=bao.url, cache_ttl="0s")
    vault = kg.vault()
    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]
    bao.stop()
    assert_vault_error(kg.vault_raw("GET", "/v1/secret/data/demo/db"), 502, UNAVAILABLE)

    bao.start()  # same port; in memory, so set up and seeded again

    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_mount_preflight_is_answered_without_the_upstream(start_vault_keygate):
    kg = start_vault_keygate(vault_addr=f"http://127.0.0.1:{free_port()}")  # nothing listens there

    resp = kg.vault_raw("GET", "/v1/sys/internal/ui/mounts/secret/demo/db")

    assert resp.status == 200, resp.text[:500]
    assert resp.json()["data"]["type"] == "kv"


def test_approle_login_is_renewed_past_the_token_ttl(start_openbao, start_vault_keygate):
    """keygate logs in with AppRole and keeps its short-lived token alive."""
    bao = start_openbao()
    root = bao.client()
    root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle("keygate", token_policies=["admin"], token_ttl="3s", token_max_ttl="10m")
    role_id = root.auth.approle.read_role_id("keygate")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("keygate")["data"]["secret_id"]
    kg = start_vault_keygate(vault_addr=bao.url, vault_approle=(role_id, secret_id), cache_ttl="0s")

    assert kv_read(kg.vault(), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]
    time.sleep(7)  # more than twice the token's 3 s TTL: only renewal keeps it valid
    assert kv_read(kg.vault(), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]
