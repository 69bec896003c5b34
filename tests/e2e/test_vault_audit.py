"""Vault traffic in the audit log, a config with the Vault front end loads,
and no Vault secret (KV values, private keys, tokens) ever leaves the data
path: not in the admin API, the audit log or keygate's own log."""

from __future__ import annotations

import uuid

from harness import (
    everything_keygate_shows,
    VAULT_DEMO_DB,
    VAULT_KV_MOUNT,
    VAULT_PROD_DB,
    VAULT_SECRET_MARKERS,
    describe,
    expect_vault_forbidden,
    expect_vault_held,
    free_port,
    issue_cert,
    kv_read,
    render_config,
    run,
)


def test_check_accepts_the_vault_test_config(keygate_bin, tmp_path):
    for passthrough in (False, True):
        config = tmp_path / f"keygate-passthrough-{passthrough}.toml"
        config.write_text(
            render_config(
                listen="127.0.0.1:1",
                admin_listen="127.0.0.1:2",
                state=str(tmp_path / "kg.db"),
                vault_addr=f"http://127.0.0.1:{free_port()}",
                vault_passthrough=passthrough,
                vault_passthrough_cache_ttl="1s",
            )
        )
        result = run([keygate_bin, "check", "--config", config], cwd=tmp_path)
        assert result.returncode == 0, describe(result)


def test_vault_decisions_are_audited_with_front_operation_and_rule(quick_vault_keygate):
    kg = quick_vault_keygate
    vault = kg.vault()
    kv_read(vault, VAULT_DEMO_DB)
    expect_vault_forbidden(
        lambda: vault.secrets.kv.v2.delete_latest_version_of_secret(path=VAULT_DEMO_DB, mount_point=VAULT_KV_MOUNT)
    )
    held_id = expect_vault_held(lambda: kv_read(vault, VAULT_PROD_DB))

    events = [e for e in kg.admin.audit() if e["front"] == "vault"]

    allowed = [e for e in events if e["kind"] == "request.allowed" and e["resources"] == ["secret/demo/db"]]
    assert allowed, f"no request.allowed for secret/demo/db in {events}"
    assert (allowed[0]["identity"], allowed[0]["operation"], allowed[0]["rule"]) == (
        "demo-app", "kv.read", "vault-demo-read",
    )  # fmt: skip
    denied = [e for e in events if e["kind"] == "request.denied"]
    assert denied and (denied[0]["operation"], denied[0]["rule"]) == ("kv.delete", "vault-no-delete")
    held = [e for e in events if e["kind"] == "request.held" and e["request_id"] == held_id]
    assert held and held[0]["resources"] == ["secret/prod/payments/db"] and held[0]["rule"] == "vault-prod-read"


def test_audit_chain_verifies_after_vault_traffic(quick_vault_keygate):
    kg = quick_vault_keygate
    kv_read(kg.vault(), VAULT_DEMO_DB)
    kg.admin.approve(expect_vault_held(lambda: kv_read(kg.vault(), VAULT_PROD_DB)))
    kv_read(kg.vault(), VAULT_PROD_DB)
    kg.stop()

    result = run([kg.binary, "audit", "verify", "--config", kg.config_path], cwd=kg.workdir)

    assert result.returncode == 0, describe(result)
    assert "audit log OK" in result.stdout + result.stderr, describe(result)


def test_no_vault_secret_in_admin_api_audit_or_logs(start_vault_keygate, background):
    kg = start_vault_keygate()
    vault = kg.vault()
    written = f"vault-written-{uuid.uuid4().hex[:8]}"
    held_write = f"vault-held-write-{uuid.uuid4().hex[:8]}"
    markers = VAULT_SECRET_MARKERS + [written, held_write]

    # values flow through every path: reads (cached and not), a write, a held
    # read approved while waiting, a held write and a held wrapped read denied,
    # certificates (one held and approved), a token, wrapping and unwrapping
    kv_read(vault, VAULT_DEMO_DB)
    kv_read(vault, VAULT_DEMO_DB)
    vault.secrets.kv.v2.create_or_update_secret(
        path=VAULT_DEMO_DB, secret={"username": "app", "password": written}, mount_point=VAULT_KV_MOUNT
    )
    kv_read(vault, VAULT_DEMO_DB)
    waiting = background.submit(kv_read, vault, VAULT_PROD_DB)
    kg.admin.approve(kg.admin.wait_for_pending(operation="kv.read")["id"])
    waiting.result(timeout=30)
    waiting = background.submit(
        vault.secrets.kv.v2.create_or_update_secret,
        path=VAULT_PROD_DB, secret={"password": held_write}, mount_point=VAULT_KV_MOUNT,
    )  # fmt: skip
    kg.admin.deny(kg.admin.wait_for_pending(operation="kv.write")["id"], reason="no writes to prod")
    expect_vault_forbidden(lambda: waiting.result(timeout=30))
    waiting = background.submit(vault.read, "secret/data/prod/payments/db", wrap_ttl="60s")
    kg.admin.deny(kg.admin.wait_for_pending(operation="kv.read")["id"], reason="no")
    expect_vault_forbidden(lambda: waiting.result(timeout=30))
    issue_cert(vault, "demo-app.svc.cluster.local", ttl="1h")
    waiting = background.submit(issue_cert, vault, "*.svc.cluster.local", ttl="1h")
    kg.admin.approve(kg.admin.wait_for_pending(operation="pki.issue")["id"])
    waiting.result(timeout=30)
    token = vault.auth.token.create(policies=["app-read"], ttl="1h")["auth"]["client_token"]
    wrapped = vault.read("secret/data/demo/db", wrap_ttl="60s")["wrap_info"]["token"]
    vault.sys.unwrap(token=wrapped)
    markers += [token, wrapped]

    outputs = everything_keygate_shows(kg)

    leaks = [(where, m[:12]) for where, text in outputs.items() for m in markers if m in text]
    assert not leaks, f"secret values leaked: {leaks}"
