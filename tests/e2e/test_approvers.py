"""Approver workflows end to end: quorum and factors, owners, concurrent
approvals, denial quorum, grant narrowing, required justifications,
escalation, break-glass and its review queue, the event stream, the CLI
review loop and watch, and post-approval review of a grant's uses.

Real clients (boto3, hvac) go through keygate to moto / OpenBao while
approvers act through the admin API and the keygate CLI. The harness's
config is extended here by editing the rendered TOML: more approvers and
groups, owners, and this module's `[[policy.rules]]` placed before the
harness's rules (rules are tried in order, so ours decide).

The helpers at the top (gate config, event stream reader) are shared with
test_webhooks.py.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import KEYGATES
from harness import (
    ALICE,
    BOB,
    CAROL,
    DEMO_APP,
    OTHER_APP,
    PROD_API,
    PROD_DB,
    SECRETS,
    VAULT_DEMO_DB,
    VAULT_SECRETS,
    AdminClient,
    Keygate,
    client_error,
    describe,
    error_of,
    expect_held,
    expect_vault_forbidden,
    http_connection,
    kv_read,
    toml_value,
)

# --------------------------------------------------------------------------
# Approvers and groups added to the harness's alice (secops), bob (secops,
# owner of demo-app) and carol (payments).

DAVE = "kg-dave-token"  # payments-owners
ERIN = "kg-erin-token"  # secops and payments-owners
FRANK = "kg-frank-token"  # leads (the escalation group)
GRACE = "kg-grace-token"  # secops
CROWD = [f"kg-crowd{i}-token" for i in range(1, 7)]  # crowd1..crowd6, group crowd

EXTRA_APPROVERS: dict[str, tuple[str, list[str]]] = {
    "dave": (DAVE, ["payments-owners"]),
    "erin": (ERIN, ["secops", "payments-owners"]),
    "frank": (FRANK, ["leads"]),
    "grace": (GRACE, ["secops"]),
    **{f"crowd{i}": (token, ["crowd"]) for i, token in enumerate(CROWD, start=1)},
}
# Everyone per group, with the harness's approvers.
GROUP_MEMBERS = {
    "secops": {"alice", "bob", "erin", "grace"},
    "payments": {"carol"},
    "payments-owners": {"dave", "erin"},
    "leads": {"frank"},
    "crowd": {f"crowd{i}" for i in range(1, 7)},
}

JUSTIFICATION_HEADER = "X-Keygate-Justification"
BREAK_GLASS_HEADER = "X-Keygate-Break-Glass"
DEMO_SECRET = "demo/db/password"  # demo-app may read it (harness rule demo-read)


def inline_table(value: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def rule(name: str, **keys: Any) -> str:
    """One `[[policy.rules]]` entry. Lists of dicts (factors) become arrays of
    inline tables; everything else goes through the harness's toml_value."""
    lines = [f"name = {toml_value(name)}"]
    for key, value in keys.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            rendered = "[" + ", ".join(inline_table(v) for v in value) + "]"
        else:
            rendered = toml_value(value)
        lines.append(f"{key} = {rendered}")
    return "[[policy.rules]]\n" + "\n".join(lines) + "\n\n"


def hold_rule(
    name: str,
    *,
    identities: tuple[str, ...] = (DEMO_APP.name,),
    operations: tuple[str, ...] = ("GetSecretValue",),
    resources: tuple[str, ...] = (PROD_DB,),
    **keys: Any,
) -> str:
    """A hold rule on the AWS front (by default: demo-app reading PROD_DB)."""
    keys.setdefault("hold_window", "20s")
    if "factors" not in keys:
        keys.setdefault("approvers", "secops")
    return rule(
        name,
        identities=list(identities),
        operations=list(operations),
        resources=list(resources),
        action="hold",
        **keys,
    )


def approvers_toml() -> str:
    return "".join(
        f"[[approvers]]\nname = {toml_value(name)}\ntoken = {toml_value(token)}\ngroups = {toml_value(groups)}\n\n"
        for name, (token, groups) in EXTRA_APPROVERS.items()
    )


def set_owner(text: str, identity: str, owner: str | None) -> str:
    """Give `identity` (an [[identities]] entry of the harness) this owner
    (None: no owner)."""
    head = f"[[identities]]\nname = {toml_value(identity)}\n"
    start = text.find(head)
    assert start >= 0, f"no [[identities]] entry named {identity} in the rendered config"
    body_start = start + len(head)
    end = text.find("\n[", body_start)
    end = len(text) if end < 0 else end
    body = re.sub(r"^owner = .*\n", "", text[body_start:end], flags=re.M)
    if owner is not None:
        body = f"owner = {toml_value(owner)}\n" + body
    return text[:body_start] + body + text[end:]


def customize_config(
    text: str,
    rules: str = "",
    owners: dict[str, str | None] | None = None,
    extra: str = "",
) -> str:
    """The harness's rendered config with the extra approvers, `owners`
    (identity -> owner, None removes it), `rules` tried before the harness's
    rules, and `extra` (e.g. a [notify] table) at the end."""
    assert "\n[policy]\n" in text, "rendered config has no [policy] table"
    text = text.replace("\n[policy]\n", "\n" + approvers_toml() + "[policy]\n", 1)
    first = text.index("[[policy.rules]]")
    text = text[:first] + rules + text[first:]
    for identity, owner in (owners or {}).items():
        text = set_owner(text, identity, owner)
    if extra:
        text = text.rstrip("\n") + "\n\n" + extra.strip("\n") + "\n"
    return text


@pytest.fixture
def start_gate(request, keygate_bin: Path, upstream, tmp_path: Path) -> Callable[..., Keygate]:
    """start_gate(rules, owners=..., extra=..., **render_config options) ->
    a running keygate whose config is the harness's plus the extra approvers,
    `owners`, `rules` (first) and `extra` (a string, or a function of the
    configured but not yet started Keygate, for tables that name its ports).
    start_gate.make(...) configures one without starting it."""
    started: list[Keygate] = []
    request.node.stash[KEYGATES] = started

    def make(
        rules: str = "",
        *,
        owners: dict[str, str | None] | None = None,
        extra: str | Callable[[Keygate], str] = "",
        **config_opts: Any,
    ) -> Keygate:
        kg = Keygate(keygate_bin, tmp_path / f"keygate{len(started)}", upstream.url, **config_opts)
        started.append(kg)
        extra_text = extra(kg) if callable(extra) else extra
        kg.config_path.write_text(customize_config(kg.config_path.read_text(), rules, owners, extra_text))
        return kg

    def start(*args: Any, **kw: Any) -> Keygate:
        return make(*args, **kw).start()

    start.make = make
    yield start
    for kg in started:
        kg.stop()


def admin_as(kg: Keygate, token: str) -> AdminClient:
    return AdminClient(kg.admin_url, token, kg.admin_context)


def review(kg: Keygate, request_id: str, token: str, verb: str = "approve", body: dict | None = None):
    """POST approve/deny as the approver holding `token`; the raw response."""
    if body is None:
        body = {} if verb == "approve" else {"reason": "not now"}
    return kg.admin.call("POST", f"/admin/v1/requests/{request_id}/{verb}", body, token=token)


def reviewed_ok(resp) -> dict:
    assert resp.status == 200, f"review refused: {resp.status} {resp.text[:500]}"
    return resp.json()


def expect_refused(resp, status: int, code: str) -> dict:
    assert resp.status == status, f"expected {status} {code}, got {resp.status}: {resp.text[:500]}"
    err = error_of(resp)
    assert err["code"] == code, f"expected error code {code!r}, got {err}"
    return err


def audit_of(kg: Keygate, request_id: str) -> list[dict]:
    return [e for e in kg.admin.audit() if e.get("request_id") == request_id]


def kinds_of(kg: Keygate, request_id: str) -> list[str]:
    return [e["kind"] for e in audit_of(kg, request_id)]


def with_header(client, name: str, value: str):
    """A boto3 client that sends `name: value` on every Secrets Manager call."""

    def add(request, **_):
        request.headers[name] = value

    client.meta.events.register("before-sign.secrets-manager.*", add)
    return client


def still_waiting(future, seconds: float = 0.7) -> bool:
    """True if the call has not returned after `seconds`."""
    time.sleep(seconds)
    return not future.done()


# --------------------------------------------------------------------------
# The admin API's server-sent event stream


class EventStream:
    """Follows GET /admin/v1/events in a thread; every event is kept as
    {"event": name, "data": parsed JSON, "raw": the data line}. (http.client
    rather than requests, so that close() can shut the socket down under the
    reading thread.)"""

    def __init__(self, admin_url: str, token: str = ALICE):
        self.events: list[dict] = []
        self.raw = ""  # everything received, for leak checks
        self._cond = threading.Condition()
        self.conn = http_connection(admin_url, timeout=10)
        self.conn.request(
            "GET",
            "/admin/v1/events",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        )
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            body = self.resp.read()[:300]
            self.conn.close()
            raise AssertionError(f"GET /admin/v1/events: {self.resp.status} {body!r}")
        content_type = self.resp.getheader("content-type", "")
        assert content_type.startswith("text/event-stream"), f"event stream Content-Type is {content_type!r}"
        self.conn.sock.settimeout(None)  # keep-alive comments come every 15 s; close() ends the wait
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        # keygate sends a comment line as soon as the stream is subscribed
        assert self.connected.wait(10), "the event stream sent nothing within 10 s"

    def _read(self) -> None:
        buffer = ""
        name = None
        try:
            while True:
                chunk = self.resp.read1(65536)
                if not chunk:
                    return
                text = chunk.decode("utf-8", errors="replace")
                self.connected.set()
                with self._cond:
                    self.raw += text
                buffer += text
                while "\n" in buffer:
                    line, buffer = buffer.split("\n", 1)
                    line = line.rstrip("\r")
                    if line.startswith("event:"):
                        name = line[len("event:") :].strip()
                    elif line.startswith("data:"):
                        data = line[len("data:") :].strip()
                        try:
                            parsed = json.loads(data)
                        except ValueError:
                            parsed = None
                        with self._cond:
                            self.events.append({"event": name, "data": parsed, "raw": data})
                            self._cond.notify_all()
                    elif line == "":
                        name = None
        except Exception:  # the stream was closed by us or by keygate
            pass

    def wait_for(self, event: str, request_id: str | None = None, timeout: float = 15) -> dict:
        """The first event named `event` (about `request_id`, if given)."""

        def find():
            for e in self.events:
                data = e["data"] or {}
                if e["event"] == event and (request_id is None or data.get("request", {}).get("id") == request_id):
                    return e
            return None

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = find()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e["event"], (e["data"] or {}).get("request", {}).get("id")) for e in self.events]
                    raise AssertionError(f"no {event!r} event for {request_id} within {timeout}s; saw {seen}")
                self._cond.wait(left)

    def of(self, request_id: str) -> list[str]:
        with self._cond:
            return [e["event"] for e in self.events if (e["data"] or {}).get("request", {}).get("id") == request_id]

    def close(self) -> None:
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        self.thread.join(5)


@pytest.fixture
def event_streams():
    """open(kg, token=ALICE) -> an EventStream, closed after the test."""
    opened: list[EventStream] = []

    def open_stream(kg: Keygate, token: str = ALICE) -> EventStream:
        stream = EventStream(kg.admin_url, token)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


# ==========================================================================
# Quorum


def test_two_approvals_needed_first_counts_and_second_releases_the_waiting_client(start_gate, background):
    kg = start_gate(hold_rule("quorum-2", approvals=2))
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)
    assert pending["rule"] == "quorum-2"
    assert pending["required_approvals"] == 2

    first = reviewed_ok(review(kg, pending["id"], ALICE, body={"comment": "one"}))
    assert first["outcome"] == {"result": "approval_counted", "have": 1, "need": 2}, first["outcome"]
    assert first["state"] == "pending"
    assert still_waiting(waiting), "one approval of two must not release the client"

    second = reviewed_ok(review(kg, pending["id"], ERIN, body={"comment": "two"}))
    assert second["outcome"]["result"] == "approved", second["outcome"]
    assert second["state"] == "approved"

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    view = kg.admin.request(pending["id"])
    assert [(a["approver"], a["comment"]) for a in view["approvals"]] == [("alice", "one"), ("erin", "two")]
    assert all(a["at"] for a in view["approvals"])
    approved = [e for e in audit_of(kg, pending["id"]) if e["kind"] == "request.approved"]
    assert [e["actor"] for e in approved] == ["alice", "erin"], approved
    assert "one" in (approved[0]["detail"] or "") and "two" in (approved[1]["detail"] or ""), approved


def test_the_same_approver_cannot_count_twice(start_gate):
    kg = start_gate(hold_rule("quorum-2", approvals=2, hold_window="1s"))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    reviewed_ok(review(kg, request_id, ALICE))
    expect_refused(review(kg, request_id, ALICE), 409, "not_pending")
    expect_refused(review(kg, request_id, ALICE, "deny"), 409, "not_pending")

    view = kg.admin.request(request_id)
    assert view["state"] == "pending"
    assert [a["approver"] for a in view["approvals"]] == ["alice"]


def test_two_factors_are_met_by_matching_one_person_in_both_groups_fills_one_slot(start_gate, background):
    factors = [{"group": "secops", "approvals": 1}, {"group": "payments-owners", "approvals": 1}]
    kg = start_gate(hold_rule("two-factors", factors=factors))
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)
    assert [(f["group"], f["approvals"]) for f in pending["factors"]] == [("secops", 1), ("payments-owners", 1)]

    # alice and grace are both only secops: together they fill one slot
    first = reviewed_ok(review(kg, pending["id"], ALICE))
    assert first["outcome"] == {"result": "approval_counted", "have": 1, "need": 2}, first["outcome"]
    second = reviewed_ok(review(kg, pending["id"], GRACE))
    assert second["outcome"] == {"result": "approval_counted", "have": 1, "need": 2}, second["outcome"]
    assert still_waiting(waiting), "two secops approvals do not meet the payments-owners factor"

    # erin (secops and payments-owners) takes the payments-owners slot
    third = reviewed_ok(review(kg, pending["id"], ERIN))
    assert third["outcome"] == {"result": "approved"}, third["outcome"]
    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]


def test_a_person_in_both_factor_groups_plus_one_in_a_single_group_suffices(start_gate):
    factors = [{"group": "secops", "approvals": 1}, {"group": "payments-owners", "approvals": 1}]
    kg = start_gate(hold_rule("two-factors", factors=factors, hold_window="1s"))
    sm = kg.client()
    # erin first (could fill either slot), then dave (payments-owners only):
    # the matching moves erin to secops
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    assert reviewed_ok(review(kg, request_id, ERIN))["outcome"]["result"] == "approval_counted"
    assert reviewed_ok(review(kg, request_id, DAVE))["outcome"] == {"result": "approved"}
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]

    # a person in both groups alone never suffices
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    outcome = reviewed_ok(review(kg, request_id, ERIN))["outcome"]
    assert outcome == {"result": "approval_counted", "have": 1, "need": 2}, outcome
    # carol is in neither group
    expect_refused(review(kg, request_id, CAROL), 403, "not_in_group")


# ==========================================================================
# Owners


def test_the_person_owner_cannot_approve_or_deny_and_does_not_count(start_gate):
    kg = start_gate(hold_rule("owned", approvals=1, hold_window="1s"))  # demo-app's owner is bob (secops)
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    expect_refused(review(kg, request_id, BOB), 403, "owner")
    expect_refused(review(kg, request_id, BOB, "deny"), 403, "owner")
    view = kg.admin.request(request_id)
    assert (view["state"], view["approvals"], view["denials"] or []) == ("pending", [], [])

    assert reviewed_ok(review(kg, request_id, GRACE))["outcome"] == {"result": "approved"}


def test_a_group_owner_none_of_its_members_count(start_gate):
    kg = start_gate(
        hold_rule("other-owned", identities=(OTHER_APP.name,), hold_window="1s"),
        owners={OTHER_APP.name: "payments-owners"},
    )
    request_id = expect_held(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))

    # erin is secops (the rule's group) but also payments-owners, which owns other-app
    expect_refused(review(kg, request_id, ERIN), 403, "owner")
    expect_refused(review(kg, request_id, ERIN, "deny"), 403, "owner")
    assert kg.admin.request(request_id)["state"] == "pending"

    # bob owns demo-app, not other-app: his approval counts here
    assert reviewed_ok(review(kg, request_id, BOB))["outcome"] == {"result": "approved"}


def test_whoami_names_the_signed_in_approver(start_gate):
    kg = start_gate()
    resp = kg.admin.call("GET", "/admin/v1/whoami", token=ERIN)
    assert resp.status == 200, resp.text
    me = resp.json()
    assert me["name"] == "erin"
    assert sorted(me["groups"]) == ["payments-owners", "secops"]
    assert kg.admin.call("GET", "/admin/v1/whoami", token=None).status == 401


# ==========================================================================
# Concurrency


@pytest.mark.parametrize("needed", [1, 3])
def test_concurrent_approvals_are_counted_once(start_gate, background, needed):
    kg = start_gate(hold_rule("crowd", approvers="crowd", approvals=needed))
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    request_id = kg.admin.wait_for_pending(resource=PROD_DB)["id"]

    barrier = threading.Barrier(len(CROWD))
    results: list[Any] = [None] * len(CROWD)

    def approve(i: int) -> None:
        barrier.wait(10)
        results[i] = review(kg, request_id, CROWD[i], body={"comment": f"crowd{i + 1}"})

    threads = [threading.Thread(target=approve, args=(i,)) for i in range(len(CROWD))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    statuses = sorted(r.status for r in results)
    outcomes = [r.json()["outcome"]["result"] for r in results if r.status == 200]
    assert outcomes.count("approved") == 1, f"exactly one approval decides: {outcomes} {statuses}"
    assert outcomes.count("approval_counted") == needed - 1, outcomes
    conflicts = [r for r in results if r.status != 200]
    assert len(conflicts) == len(CROWD) - needed, [(r.status, r.text) for r in results]
    for r in conflicts:
        expect_refused(r, 409, "not_pending")

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    view = kg.admin.request(request_id)
    assert view["state"] == "approved"
    approvers = [a["approver"] for a in view["approvals"]]
    assert len(approvers) == needed and len(set(approvers)) == needed, approvers
    events = audit_of(kg, request_id)
    approved_events = [e for e in events if e["kind"] == "request.approved"]
    assert len(approved_events) == needed, [(e["kind"], e["actor"]) for e in events]
    assert sorted(e["actor"] for e in approved_events) == sorted(approvers)
    assert [e["kind"] for e in events].count("grant.used") == 1, [e["kind"] for e in events]
    assert len(view["grant"]["used_at"]) == 1, view["grant"]
    assert view["grant"]["uses_left"] == 0, view["grant"]


# ==========================================================================
# Denials


def test_two_denials_needed_to_deny(start_gate, background):
    kg = start_gate(hold_rule("deny-2", denials=2))
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    request_id = kg.admin.wait_for_pending(resource=PROD_DB)["id"]

    first = reviewed_ok(review(kg, request_id, ALICE, "deny", {"reason": "looks odd"}))
    assert first["outcome"] == {"result": "denial_counted", "have": 1, "need": 2}, first["outcome"]
    assert first["state"] == "pending"
    assert still_waiting(waiting), "one denial of two must not decide"
    expect_refused(review(kg, request_id, ALICE, "deny", {"reason": "again"}), 409, "not_pending")

    second = reviewed_ok(review(kg, request_id, ERIN, "deny", {"reason": "no ticket"}))
    assert second["outcome"] == {"result": "denied"}, second["outcome"]
    assert second["state"] == "denied"
    assert second["denial"]["by"] == "erin" and second["denial"]["reason"] == "no ticket"
    assert [d["approver"] for d in second["denials"]] == ["alice", "erin"]

    code, message, status = client_error(lambda: waiting.result(timeout=30))
    assert (code, status) == ("AccessDeniedException", 400)
    assert "was denied by erin: no ticket" in message
    expect_refused(review(kg, request_id, GRACE), 409, "not_pending")
    rejected = [e for e in audit_of(kg, request_id) if e["kind"] == "request.rejected"]
    assert [e["actor"] for e in rejected] == ["alice", "erin"], rejected
    assert "looks odd" in (rejected[0]["detail"] or "") and "no ticket" in (rejected[1]["detail"] or "")


def test_an_approval_after_one_denial_of_two_can_still_approve(start_gate):
    kg = start_gate(hold_rule("deny-2", denials=2, hold_window="1s"))
    sm = kg.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    denial = reviewed_ok(review(kg, request_id, ALICE, "deny", {"reason": "hmm"}))
    assert denial["outcome"]["result"] == "denial_counted"
    assert reviewed_ok(review(kg, request_id, GRACE))["outcome"] == {"result": "approved"}
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]


# ==========================================================================
# Narrowing and post-approval review

WINDOW_RULE = dict(grant="window", grant_uses=3, grant_window="1m", hold_window="1s")


def test_an_approver_may_narrow_the_grant_but_never_widen_it(start_gate):
    kg = start_gate(hold_rule("window", **WINDOW_RULE))
    sm = kg.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))

    for body in ({"grant_uses": 4}, {"grant_window": "2m"}, {"grant_uses": 0}):
        expect_refused(review(kg, request_id, ALICE, body=body), 400, "widens_grant")
    view = kg.admin.request(request_id)
    assert (view["state"], view["approvals"]) == ("pending", []), "a refused narrowing records nothing"

    narrowed = {"comment": "one go", "grant_uses": 1, "grant_window": "30s"}
    approved = reviewed_ok(review(kg, request_id, ALICE, body=narrowed))
    assert approved["outcome"] == {"result": "approved"}
    assert approved["grant"]["uses_left"] == 1, approved["grant"]

    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    # the narrowed grant is spent after one use: the next call is a new hold
    again = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    assert again != request_id
    assert kg.admin.request(request_id)["grant"]["uses_left"] == 0


def test_cli_approve_narrows_with_grant_uses(start_gate):
    kg = start_gate(hold_rule("window", **WINDOW_RULE))
    sm = kg.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))

    widened = kg.cli("requests", "approve", request_id, "--grant-uses", "9")
    assert widened.returncode != 0, describe(widened)
    assert "widen" in (widened.stdout + widened.stderr).lower() or "rule" in widened.stderr, describe(widened)

    approved = kg.cli("requests", "approve", request_id, "--grant-uses", "2", "--comment", "two uses")
    assert approved.returncode == 0, describe(approved)
    assert kg.admin.request(request_id)["grant"]["uses_left"] == 2


def test_post_approval_review_shows_each_use_of_a_window_grant(start_gate):
    kg = start_gate(hold_rule("window", **WINDOW_RULE))
    sm = kg.client()
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    kg.admin.approve(request_id, comment="three uses")

    approved_at = datetime.datetime.fromisoformat(kg.admin.request(request_id)["decided_at"])
    for _ in range(2):
        assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
        time.sleep(0.05)

    view = kg.admin.request(request_id)
    grant = view["grant"]
    assert grant["uses_left"] == 1, grant
    assert len(grant["used_at"]) == 2, f"two uses, two used_at entries: {grant}"
    # (compared as instants: keygate's RFC 3339 strings drop trailing zeros of the milliseconds)
    first, second = (datetime.datetime.fromisoformat(t) for t in grant["used_at"])
    assert approved_at <= first < second, grant
    assert kinds_of(kg, request_id).count("grant.used") == 2
    shown = kg.cli("requests", "show", request_id)
    assert shown.returncode == 0, describe(shown)
    assert all(t in shown.stdout for t in grant["used_at"]), describe(shown)


# ==========================================================================
# Justification


def test_a_rule_requiring_justification_refuses_boto3_without_the_header(start_gate):
    rules = rule(
        "api-justified",
        identities=[DEMO_APP.name],
        operations=["GetSecretValue"],
        resources=[PROD_API],
        action="allow",
        require_justification=True,
    ) + hold_rule("db-justified", require_justification=True, hold_window="1s")
    kg = start_gate(rules)

    for secret in (PROD_API, PROD_DB):
        code, message, status = client_error(lambda: kg.client().get_secret_value(SecretId=secret))
        assert (code, status) == ("AccessDeniedException", 400), f"{secret}: {code} {status} {message}"
        assert "X-Keygate-Justification" in message, message
    assert kg.admin.requests("pending") == [], "a request without justification is refused, not held"

    sm = with_header(kg.client(), JUSTIFICATION_HEADER, "INC-4242 card processor outage")
    assert sm.get_secret_value(SecretId=PROD_API)["SecretString"] == SECRETS[PROD_API]
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    assert kg.admin.request(request_id)["justification"] == "INC-4242 card processor outage"
    denied = [e for e in kg.admin.audit() if e["kind"] == "request.denied" and e.get("rule") == "api-justified"]
    assert denied, "the refusal is audited"


def test_a_rule_requiring_justification_refuses_hvac_without_the_header(start_gate, vault_upstream):
    rules = rule(
        "vault-justified",
        fronts=["vault"],
        identities=[DEMO_APP.name],
        operations=["kv.read"],
        resources=["secret/demo/*"],
        action="allow",
        require_justification=True,
    )
    kg = start_gate(rules, vault_addr=vault_upstream.url)

    message = expect_vault_forbidden(lambda: kv_read(kg.vault(), VAULT_DEMO_DB))
    assert "X-Keygate-Justification" in message, message

    client = kg.vault()
    client.session.headers[JUSTIFICATION_HEADER] = "rotating the demo db password"
    assert kv_read(client, VAULT_DEMO_DB) == VAULT_SECRETS[VAULT_DEMO_DB]


# ==========================================================================
# Escalation


def escalation_rule(can_approve: bool) -> str:
    return hold_rule(
        "escalating",
        approvers="secops",
        escalate_after="2s",
        escalate_to="leads",
        escalation_can_approve=can_approve,
    )


def test_escalation_after_2s_lets_the_escalation_group_approve(start_gate, background, event_streams):
    kg = start_gate(escalation_rule(True))
    events = event_streams(kg)
    started = time.monotonic()
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)
    assert pending["escalated_at"] is None

    # before escalation, frank (leads) is nobody for this rule
    expect_refused(review(kg, pending["id"], FRANK), 403, "not_in_group")

    escalated = events.wait_for("escalated", pending["id"], timeout=10)
    took = time.monotonic() - started
    assert took >= 1.9, f"escalated after {took:.1f}s, before escalate_after"
    assert escalated["data"]["request"]["escalated_at"], escalated["data"]
    view = kg.admin.request(pending["id"])
    assert view["state"] == "pending" and view["escalated_at"], view
    assert "request.escalated" in kinds_of(kg, pending["id"])

    approved = reviewed_ok(review(kg, pending["id"], FRANK, body={"comment": "on call lead"}))
    assert approved["outcome"] == {"result": "approved"}
    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    assert events.of(pending["id"]).count("escalated") == 1


def test_escalation_without_can_approve_only_notifies(start_gate, event_streams):
    kg = start_gate(escalation_rule(False).replace('hold_window = "20s"', 'hold_window = "1s"'))
    events = event_streams(kg)
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    events.wait_for("escalated", request_id, timeout=10)
    assert kg.admin.request(request_id)["escalated_at"]
    expect_refused(review(kg, request_id, FRANK), 403, "not_in_group")
    assert reviewed_ok(review(kg, request_id, ALICE))["outcome"] == {"result": "approved"}


# ==========================================================================
# Break-glass


def test_break_glass_passes_at_once_and_waits_in_the_review_queue_until_acknowledged(start_gate, background):
    kg = start_gate(
        hold_rule(
            "prod-bg",
            identities=(DEMO_APP.name, OTHER_APP.name),
            break_glass=[DEMO_APP.name],
        )
    )
    sm = with_header(kg.client(), BREAK_GLASS_HEADER, "INC-77 payments down, nobody answers")

    started = time.monotonic()
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    took = time.monotonic() - started
    assert took < 5, f"a break-glass read took {took:.1f}s; it must not wait for approval (hold_window 20s)"

    resp = kg.admin.call("GET", "/admin/v1/reviews")
    assert resp.status == 200, resp.text
    [queued] = resp.json()["reviews"]
    assert queued["state"] == "bypassed"
    assert queued["identity"] == DEMO_APP.name and queued["resources"] == [PROD_DB]
    assert queued["bypass"]["by"] == DEMO_APP.name
    assert queued["bypass"]["reason"] == "INC-77 payments down, nobody answers"
    assert queued["bypass"]["acknowledged"] is None
    assert [r["id"] for r in kg.admin.requests("bypassed")] == [queued["id"]]
    assert kg.admin.requests("pending") == []
    bypassed = [e for e in audit_of(kg, queued["id"]) if e["kind"] == "request.bypassed"]
    assert len(bypassed) == 1 and "INC-77" in (bypassed[0]["detail"] or ""), bypassed

    # the owner (bob) may not acknowledge, nor may someone outside the rule
    ack = f"/admin/v1/reviews/{queued['id']}/ack"
    expect_refused(kg.admin.call("POST", ack, {"comment": "mine"}, token=BOB), 403, "owner")
    expect_refused(kg.admin.call("POST", ack, {"comment": "?"}, token=CAROL), 403, "not_in_group")

    done = kg.admin.call("POST", ack, {"comment": "checked with the on-call"})
    assert done.status == 200, done.text
    assert done.json()["bypass"]["acknowledged"]["approver"] == "alice"
    assert done.json()["bypass"]["acknowledged"]["comment"] == "checked with the on-call"
    assert kg.admin.call("GET", "/admin/v1/reviews").json()["reviews"] == []
    expect_refused(kg.admin.call("POST", ack, {}, token=GRACE), 409, "already_acknowledged")
    acked = [e for e in audit_of(kg, queued["id"]) if e["kind"] == "bypass.acknowledged"]
    assert len(acked) == 1 and acked[0]["actor"] == "alice", acked
    assert "checked with the on-call" in (acked[0]["detail"] or ""), acked

    # other-app is not on the break-glass list: held as usual, the attempt shown
    other = with_header(kg.client(OTHER_APP), BREAK_GLASS_HEADER, "me too")
    waiting = background.submit(other.get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(identity=OTHER_APP.name, resource=PROD_DB)
    assert any("break-glass" in r for r in pending["reasons"]), pending["reasons"]
    kg.admin.deny(pending["id"], reason="no break-glass for other-app")
    code, message, _ = client_error(lambda: waiting.result(timeout=30))
    assert code == "AccessDeniedException" and "no break-glass for other-app" in message


def test_acknowledging_a_request_that_was_not_bypassed_conflicts(start_gate):
    kg = start_gate(hold_rule("prod-hold", hold_window="1s"))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    expect_refused(kg.admin.call("POST", f"/admin/v1/reviews/{request_id}/ack", {}), 409, "not_bypassed")


# ==========================================================================
# Event stream


def test_event_stream_delivers_created_then_approved(start_gate, background, event_streams):
    kg = start_gate(hold_rule("prod-hold"))
    assert kg.admin.call("GET", "/admin/v1/events", token=None).status == 401
    events = event_streams(kg)
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)

    created = events.wait_for("created", pending["id"])
    assert created["data"]["kind"] == "created"
    assert created["data"]["request"]["state"] == "pending"
    assert created["data"]["request"]["identity"] == DEMO_APP.name
    assert created["data"]["at"]
    kg.admin.approve(pending["id"], comment="fine")
    approved = events.wait_for("approved", pending["id"])
    assert approved["data"]["actor"] == "alice"
    assert approved["data"]["comment"] == "fine"
    assert approved["data"]["request"]["state"] == "approved"
    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    kinds = events.of(pending["id"])
    assert kinds.index("created") < kinds.index("approved"), kinds


def test_event_stream_shows_reviewed_for_a_partial_quorum_and_denied(start_gate, event_streams):
    kg = start_gate(hold_rule("quorum-2", approvals=2, hold_window="1s"))
    events = event_streams(kg)
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    review(kg, request_id, ALICE, body={"comment": "half"})
    reviewed = events.wait_for("reviewed", request_id)
    assert reviewed["data"]["actor"] == "alice"
    kg.admin.call("POST", f"/admin/v1/requests/{request_id}/deny", {"reason": "enough"}, token=GRACE)
    denied = events.wait_for("denied", request_id)
    assert denied["data"]["actor"] == "grace" and denied["data"]["comment"] == "enough"
    assert events.of(request_id) == ["created", "reviewed", "denied"]


# ==========================================================================
# CLI: review loop and watch


class Interactive:
    """A CLI process driven through its stdin, reading stdout as it comes."""

    def __init__(self, kg: Keygate, *args: str, token: str = ALICE):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_ADMIN_")}
        env.update(KEYGATE_ADMIN_ADDR=kg.admin_url, KEYGATE_ADMIN_TOKEN=token, NO_COLOR="1")
        self.proc = subprocess.Popen(
            [str(kg.binary), *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = ""
        self.pos = 0  # end of the last match

    def read_until(self, pattern: str, timeout: float = 15) -> str:
        """Read stdout until the output after the previous match matches
        `pattern`; return the text up to the end of this match."""
        regex = re.compile(pattern)
        fd = self.proc.stdout.fileno()
        start = self.pos
        deadline = time.monotonic() + timeout
        while not (match := regex.search(self.out, start)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in CLI output within {timeout}s:\n{self.out}{self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    raise AssertionError(f"CLI output ended without {pattern!r}:\n{self.out}{self.stderr()}")
                self.out += data.decode("utf-8", errors="replace")
        self.pos = match.end()
        return self.out[start : match.end()]

    def send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return "\n--- stderr ---\n" + self.proc.stderr.read().decode(errors="replace")

    def finish(self, timeout: float = 15) -> int:
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        self.out += rest.decode("utf-8", errors="replace")
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def interactive():
    started: list[Interactive] = []

    def start(kg: Keygate, *args: str, token: str = ALICE) -> Interactive:
        p = Interactive(kg, *args, token=token)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


PROMPT = r"\[a\]pprove, \[d\]eny, \[s\]kip, \[q\]uit\? $"


def test_cli_review_approves_one_request_and_denies_another(quick_keygate, interactive):
    kg = quick_keygate
    db_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    api_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_API))

    cli = interactive(kg, "requests", "review")
    decided = {}
    for _ in range(2):
        shown = cli.read_until(PROMPT)
        [current] = [i for i in (db_id, api_id) if i in shown]
        assert "demo-app" in shown and "GetSecretValue" in shown and "prod-read" in shown, shown
        if current == db_id:
            assert PROD_DB in shown, shown
            cli.send("a")
            cli.read_until(r"comment \(optional\): $")
            cli.send("approved in the review loop")
            decided[current] = cli.read_until(re.escape(db_id) + r": .*\n")
        else:
            assert PROD_API in shown, shown
            cli.send("d")
            cli.read_until(r"reason \(required\): $")
            cli.send("not in the review loop")
            decided[current] = cli.read_until(re.escape(api_id) + r": .*\n")
    assert cli.finish() == 0, cli.out + cli.stderr()
    assert "approved" in decided[db_id] and "denied" in decided[api_id], decided

    db = kg.admin.request(db_id)
    assert db["state"] == "approved"
    assert [(a["approver"], a["comment"]) for a in db["approvals"]] == [("alice", "approved in the review loop")]
    api = kg.admin.request(api_id)
    assert api["state"] == "denied"
    assert (api["denial"]["by"], api["denial"]["reason"]) == ("alice", "not in the review loop")
    assert kg.client().get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]


def test_cli_review_skip_and_refusals_are_reported(quick_keygate, interactive):
    kg = quick_keygate
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    # bob owns demo-app: his approval is refused, and the loop says so
    cli = interactive(kg, "requests", "review", token=BOB)
    cli.read_until(PROMPT)
    cli.send("a")
    cli.read_until(r"comment \(optional\): $")
    cli.send("")
    said = cli.read_until(re.escape(request_id) + r": .*\n")
    assert "not recorded" in said, said
    assert cli.finish() == 0
    # alice skips: nothing changes
    cli = interactive(kg, "requests", "review")
    cli.read_until(PROMPT)
    cli.send("s")
    assert cli.finish() == 0, cli.out
    assert kg.admin.request(request_id)["state"] == "pending"


def test_cli_watch_prints_a_created_line_and_json(quick_keygate, interactive):
    kg = quick_keygate
    plain = interactive(kg, "requests", "watch")
    raw = interactive(kg, "requests", "watch", "--json")
    time.sleep(1.0)  # both subscribed before the event happens
    assert plain.proc.poll() is None and raw.proc.poll() is None, plain.stderr() + raw.stderr()

    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    line = plain.read_until(r"created[^\n]*" + re.escape(request_id) + r"[^\n]*\n")
    created = [ln for ln in line.splitlines() if request_id in ln and "created" in ln][0]
    assert "demo-app" in created and PROD_DB in created and "prod-read" in created, created
    text = raw.read_until(re.escape(request_id) + r"[^\n]*\n")
    parsed = [json.loads(ln) for ln in text.splitlines() if request_id in ln]
    assert parsed[0]["kind"] == "created" and parsed[0]["request"]["id"] == request_id, parsed
