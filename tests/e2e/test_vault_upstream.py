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
