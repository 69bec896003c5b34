"""State survives kill -9: pending requests, approvals, grants, the audit chain."""

from __future__ import annotations

import contextlib
import json
import sqlite3

from harness import (
    PROD_DB,
    SECRETS,
    VAULT_DEMO_DB,
    VAULT_KV_MOUNT,
    VAULT_SECRETS,
    assert_vault_error,
    describe,
    expect_held,
    raw_aws_call,
    raw_vault_call,
    run,
)


def test_pending_request_survives_kill9_and_can_be_approved_after_restart(quick_keygate):
    kg = quick_keygate
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    kg.kill9()
    kg.start()

    assert [r["id"] for r in kg.admin.requests("pending")] == [request_id]
    assert kg.admin.approve(request_id)["state"] == "approved"
    assert kg.client().get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]


def test_identical_request_after_restart_merges_into_surviving_pending_request(quick_keygate):
    kg = quick_keygate
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    kg.kill9()
    kg.start()

    assert expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB)) == request_id


def test_approval_and_grant_survive_kill9_before_the_retry(quick_keygate):
    kg = quick_keygate
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    kg.admin.approve(request_id, comment="approved before the crash")

    kg.kill9()
    kg.start()

    view = kg.admin.request(request_id)
    assert view["state"] == "approved"
    assert view["approvals"][0]["comment"] == "approved before the crash"
    assert kg.client().get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    # the grant was "once": used up now
    assert expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB)) != request_id


def test_audit_survives_kill9_and_verifies_after_restart(quick_keygate):
    kg = quick_keygate
    kg.client().get_secret_value(SecretId="demo/db/password")
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    kg.admin.approve(request_id)
    before = kg.admin.audit()

    kg.kill9()
    kg.start()

    after = kg.admin.audit()
    assert after[: len(before)] == before
    kinds = {e["kind"] for e in after if e["request_id"] == request_id}
    assert {"request.held", "request.approved"} <= kinds, kinds
    # new events extend the surviving chain
    kg.client().get_secret_value(SecretId="demo/api/key")
    verify = run([kg.binary, "audit", "verify", "--config", kg.config_path], cwd=kg.workdir)
    assert verify.returncode == 0, describe(verify)
    assert "audit log OK" in verify.stdout + verify.stderr, describe(verify)


@contextlib.contextmanager
def write_lock_held(kg):
    """Hold keygate's database write lock from another connection, past
    keygate's busy timeout: its commits fail meanwhile."""
    blocker = sqlite3.connect(kg.state_path, timeout=1, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_a_read_whose_audit_record_cannot_be_written_is_not_answered(start_keygate):
    """Strict audit: a read executes while its decision record is written,
    but its answer waits for the record. Here the write fails (another
    connection holds the database's write lock past keygate's busy timeout):
    the client gets an error, never the secret, and the next read works."""
    kg = start_keygate()
    secret_id = "demo/api/key"
    body = json.dumps({"SecretId": secret_id})

    with write_lock_held(kg):
        refused = raw_aws_call(kg.endpoint, "GetSecretValue", body)

    assert refused.status == 500, refused.text[:300]
    assert SECRETS[secret_id] not in refused.text
    assert refused.json()["__type"] == "InternalServiceError"

    answered = raw_aws_call(kg.endpoint, "GetSecretValue", body)
    assert answered.status == 200, answered.text[:300]
    assert answered.json()["SecretString"] == SECRETS[secret_id]
    # Only the decision that was answered is in the log.
    allowed = [e for e in kg.admin.audit() if e["kind"] == "request.allowed"]
    assert [e["resources"] for e in allowed] == [[secret_id]]


def test_a_vault_kv_read_whose_audit_record_cannot_be_written_is_not_answered(start_vault_keygate):
    """The same for the Vault front end's KV reads (the only Vault requests
    that execute while their record is written)."""
    kg = start_vault_keygate()
    path = f"/v1/{VAULT_KV_MOUNT}/data/{VAULT_DEMO_DB}"
    password = VAULT_SECRETS[VAULT_DEMO_DB]["password"]

    with write_lock_held(kg):
        refused = raw_vault_call(kg.endpoint, "GET", path)

    assert_vault_error(refused, 500)
    assert password not in refused.text

    answered = raw_vault_call(kg.endpoint, "GET", path)
    assert answered.status == 200, answered.text[:300]
    assert answered.json()["data"]["data"]["password"] == password
