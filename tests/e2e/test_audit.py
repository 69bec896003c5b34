"""The audit log: every decision recorded, hash-chained, verifiable, and free of
secret values (as are the admin API and keygate's own log)."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from harness import (
    everything_keygate_shows,
    DEMO_SECRET_IDS,
    OTHER_APP,
    PROD_DB,
    SECRET_MARKERS,
    client_error,
    describe,
    expect_held,
    run,
)

EVENT_FIELDS = {
    "seq", "at", "code", "kind", "actor", "identity", "request_id", "front",
    "operation", "resources", "rule", "detail", "prev_hash", "hash",
}  # fmt: skip


def audit_verify(kg):
    return run([kg.binary, "audit", "verify", "--config", kg.config_path], cwd=kg.workdir)


def make_some_history(kg) -> None:
    """Allowed reads, a policy denial, a held request and its approval."""
    sm = kg.client()
    sm.get_secret_value(SecretId="demo/db/password")
    sm.get_secret_value(SecretId="demo/api/key")
    client_error(lambda: sm.delete_secret(SecretId="demo/api/key"))
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    kg.admin.approve(request_id, comment="audit test")
    sm.get_secret_value(SecretId=PROD_DB)


def audit_rows(kg) -> list[int]:
    with sqlite3.connect(kg.state_path) as db:
        return [seq for (seq,) in db.execute("SELECT seq FROM audit ORDER BY seq")]


def test_decisions_are_audited_with_rule_actor_and_chain(quick_keygate):
    make_some_history(quick_keygate)

    events = quick_keygate.admin.audit()

    for event in events:
        assert EVENT_FIELDS <= set(event), f"audit event missing {EVENT_FIELDS - set(event)}: {event}"
        assert event["code"] and event["kind"] and event["actor"], event
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for prev, cur in zip(events, events[1:]):
        assert cur["prev_hash"] == prev["hash"], f"hash chain broken between {prev['seq']} and {cur['seq']}"

    by_kind = {}
    for event in events:
        by_kind.setdefault(event["kind"], []).append(event)
    allowed = [e for e in by_kind.get("request.allowed", []) if e["resources"] == ["demo/db/password"]]
    assert allowed and allowed[0]["identity"] == "demo-app" and allowed[0]["rule"] == "demo-read"
    assert allowed[0]["operation"] == "GetSecretValue" and allowed[0]["front"] == "aws"
    denied = by_kind.get("request.denied", [])
    assert denied and denied[0]["rule"] == "no-destructive" and denied[0]["operation"] == "DeleteSecret"
    approved = by_kind.get("request.approved", [])
    assert approved and approved[0]["actor"] == "alice"
    for kind in ("request.held", "grant.used"):
        assert kind in by_kind, f"no {kind} event in {sorted(by_kind)}"


def test_audit_paging_with_after_and_limit(quick_keygate):
    make_some_history(quick_keygate)
    everything = quick_keygate.admin.audit()
    assert len(everything) >= 4

    first = quick_keygate.admin.call("GET", "/admin/v1/audit?after=0&limit=2").json()["events"]
    rest = quick_keygate.admin.audit(after=first[-1]["seq"])

    assert [e["seq"] for e in first + rest] == [e["seq"] for e in everything]


def test_audit_verify_passes_on_an_intact_log(quick_keygate):
    make_some_history(quick_keygate)
    quick_keygate.stop()

    result = audit_verify(quick_keygate)

    assert result.returncode == 0, describe(result)
    assert "audit log OK" in result.stdout + result.stderr, describe(result)


def test_audit_verify_detects_an_edited_event(quick_keygate):
    make_some_history(quick_keygate)
    quick_keygate.stop()
    assert len(audit_rows(quick_keygate)) >= 3

    with sqlite3.connect(quick_keygate.state_path) as db:
        assert db.execute("UPDATE audit SET actor='mallory' WHERE seq=2").rowcount == 1

    result = audit_verify(quick_keygate)
    assert result.returncode == 1, describe(result)
    assert "audit log BROKEN" in result.stdout + result.stderr, describe(result)


def test_audit_verify_detects_a_deleted_event(quick_keygate):
    make_some_history(quick_keygate)
    quick_keygate.stop()
    seqs = audit_rows(quick_keygate)
    assert len(seqs) >= 3

    with sqlite3.connect(quick_keygate.state_path) as db:
        db.execute("DELETE FROM audit WHERE seq=?", (seqs[len(seqs) // 2],))

    result = audit_verify(quick_keygate)
    assert result.returncode == 1, describe(result)
    assert "audit log BROKEN" in result.stdout + result.stderr, describe(result)


def test_no_secret_value_in_admin_api_audit_or_logs(start_keygate):
    # long enough to approve a waiting call, short enough for the retry path
    kg = start_keygate(hold_window="4s")
    written = "demo-api-key-written-through"
    markers = SECRET_MARKERS + [written]

    # values flow through every path: allowed reads, a write, approved and
    # denied holds, a bulk export, a denial, an upstream error
    make_some_history(kg)
    kg.client().put_secret_value(SecretId="demo/api/key", SecretString=written)
    kg.client().get_secret_value(SecretId="demo/api/key")
    bulk_id = expect_held(lambda: kg.client().batch_get_secret_value(SecretIdList=DEMO_SECRET_IDS))
    kg.admin.approve(bulk_id)
    kg.client().batch_get_secret_value(SecretIdList=DEMO_SECRET_IDS)
    other_id = expect_held(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))
    kg.admin.deny(other_id, reason="no")
    client_error(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))
    client_error(lambda: kg.client().get_secret_value(SecretId="demo/missing"))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(kg.client().get_secret_value, SecretId=PROD_DB)
        kg.admin.approve(kg.admin.wait_for_pending(resource=PROD_DB)["id"])
        waiting.result(timeout=30)

    outputs = everything_keygate_shows(kg, show_ids=(bulk_id,))

    leaks = [(where, m) for where, text in outputs.items() for m in markers if m in text]
    assert not leaks, f"secret values leaked: {leaks}"
