"""Pass-through mode ([vault] passthrough = true): tokens created in OpenBao
are accepted, the identity comes from lookup-self, and the workload's own
token is what reaches the upstream. Without pass-through they are refused."""

from __future__ import annotations

import json
import time

import hvac
import pytest
from harness import VAULT_DEMO_DB, VAULT_KV_MOUNT, VAULT_SECRETS, describe, expect_vault_forbidden, kv_read, vault_error

CI_IDENTITY = "vault:token-ci"  # OpenBao prefixes a token's display name with "token-"


@pytest.fixture
def passthrough_keygate(start_vault_keygate):
    return start_vault_keygate(vault_passthrough=True, vault_passthrough_cache_ttl="1s")


def ci_token(openbao) -> str:
    """A token created in OpenBao, as a CI system would get one (policy app-read)."""
    created = openbao.bao("token", "create", "-policy=app-read", "-display-name=ci", "-format=json")
    assert created.returncode == 0, describe(created)
    return json.loads(created.stdout)["auth"]["client_token"]


def vault_events(kg, kind: str, identity: str) -> list[dict]:
    return [e for e in kg.admin.audit() if e["kind"] == kind and e["identity"] == identity and e["front"] == "vault"]


def test_openbao_token_is_accepted_with_identity_from_lookup_self(passthrough_keygate, vault_upstream):
    token = ci_token(vault_upstream)

    assert kv_read(passthrough_keygate.vault(token), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]

    allowed = vault_events(passthrough_keygate, "request.allowed", CI_IDENTITY)
    assert allowed, f"no request.allowed event for {CI_IDENTITY}"
    assert allowed[-1]["operation"] == "kv.read"
    assert allowed[-1]["rule"] == "vault-passthrough-read"  # matched by group vault-policy:app-read


def test_passthrough_forwards_the_workloads_own_token(passthrough_keygate, vault_upstream):
    # keygate's policy allows the list; the token's own OpenBao policy (app-read) does not
    vault = passthrough_keygate.vault(ci_token(vault_upstream))

    exc = vault_error(lambda: vault.secrets.kv.v2.list_secrets(path="demo", mount_point=VAULT_KV_MOUNT))

    assert isinstance(exc, hvac.exceptions.Forbidden), f"expected upstream's 403, got {type(exc).__name__}: {exc}"
    allowed = vault_events(passthrough_keygate, "request.allowed", CI_IDENTITY)
    assert "kv.list" in [e["operation"] for e in allowed], "keygate allowed it; the upstream refused it"


def test_keygate_tokens_still_work_in_passthrough_mode(passthrough_keygate):
    assert kv_read(passthrough_keygate.vault(), VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


def test_revoked_openbao_token_gets_403(passthrough_keygate, vault_upstream):
    token = ci_token(vault_upstream)
    vault = passthrough_keygate.vault(token)
    assert kv_read(vault, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]

    vault_upstream.client().auth.token.revoke(token)
    time.sleep(1.5)  # passthrough_cache_ttl = 1s

    expect_vault_forbidden(lambda: kv_read(vault, VAULT_DEMO_DB))


def test_unknown_token_in_passthrough_mode_gets_403(passthrough_keygate):
    resp = passthrough_keygate.vault_raw("GET", "/v1/secret/data/demo/db", token="s.not-a-real-token")

    assert resp.status == 403, resp.text[:500]
    assert resp.json() == {"errors": ["permission denied"]}


def test_openbao_token_is_refused_without_passthrough(vault_keygate, vault_upstream):
    expect_vault_forbidden(
        lambda: kv_read(vault_keygate.vault(ci_token(vault_upstream)), VAULT_DEMO_DB), "permission denied"
    )
