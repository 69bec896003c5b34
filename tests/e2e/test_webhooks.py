"""Webhook notifications end to end: keygate POSTs to a local receiver
(webhook_receiver.py) on created, escalated, approved, denied, expired and
bypassed, in keygate's JSON format or as a Slack incoming-webhook message,
with the right recipients; retries 503s with backoff and gives up at once on
other 4xx; a dead or hanging receiver never slows the workload; and no
payload (nor the event stream) ever carries a secret value.

Real clients (boto3) go through keygate to moto; approvers act through the
admin API. The `[notify]` table is appended to the harness's config (see
test_approvers.customize_config).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Callable

import pytest
from harness import (
    ALICE,
    DEMO_APP,
    OTHER_APP,
    PROD_API,
    PROD_DB,
    SECRET_MARKERS,
    SECRETS,
    Keygate,
    expect_held,
    free_port,
    toml_value,
)
from test_approvers import (  # noqa: F401 (fixtures)
    BREAK_GLASS_HEADER,
    DEMO_SECRET,
    ERIN,
    event_streams,
    hold_rule,
    reviewed_ok,
    review,
    start_gate,
    with_header,
)
from webhook_receiver import Delivery, WebhookReceiver

SIX_EVENTS = ["created", "escalated", "approved", "denied", "expired", "bypassed"]
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
PAYLOAD_KEYS = {"event", "at", "actor", "comment", "recipients", "request", "link"}


@pytest.fixture
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.stop()


def webhook(url: str, **keys: Any) -> dict[str, Any]:
    """One [[notify.webhooks]] entry: json, the six events, 2 s timeout, 4 attempts."""
    hook = {"name": "hook", "url": url, "format": "json", "events": SIX_EVENTS, "timeout": "2s", "max_attempts": 4}
    hook.update(keys)
    return {k: v for k, v in hook.items() if v is not None}


def notify(*hooks: dict[str, Any]) -> Callable[[Keygate], str]:
    """The [notify] table for start_gate(extra=...): admin_url names the
    keygate's own approver page."""

    def render(kg: Keygate) -> str:
        text = f"[notify]\nadmin_url = {toml_value(kg.admin_url + '/ui')}\n"
        for hook in hooks:
            text += "\n[[notify.webhooks]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in hook.items())
        return text

    return render


def check_payload(d: Delivery, kg: Keygate, event: str, request_id: str) -> dict:
    """The generic JSON payload's shape; returns it."""
    assert d.status == 200
    assert d.headers.get("content-type", "").startswith("application/json"), d.headers
    p = d.json
    assert isinstance(p, dict), f"payload is not a JSON object: {d.text[:300]}"
    missing = PAYLOAD_KEYS - set(p)
    assert not missing, f"payload lacks {missing}: {p}"
    assert p["event"] == event, p
    assert RFC3339.match(p["at"]), p["at"]
    assert isinstance(p["actor"], str) and p["actor"], p
    assert isinstance(p["recipients"], list) and all(isinstance(r, str) for r in p["recipients"]), p
    assert p["request"]["id"] == request_id, p["request"]
    assert p["request"]["identity"] and p["request"]["operation"] and p["request"]["rule"], p["request"]
    assert isinstance(p["link"], str) and p["link"].startswith(kg.admin_url + "/ui"), p["link"]
    assert request_id in p["link"], f"the link should lead to the request: {p['link']}"
    return p


def one(receiver: WebhookReceiver, event: str, request_id: str, timeout: float = 10) -> Delivery:
    [d] = receiver.wait_for(event=event, request_id=request_id, timeout=timeout)
    return d


# --------------------------------------------------------------------------
# Payloads and recipients


def test_created_and_approved_payloads_name_approvers_then_the_owner(start_gate, receiver, background):
    kg = start_gate(hold_rule("prod-hold"), extra=notify(webhook(receiver.url)))
    waiting = background.submit(kg.client().get_secret_value, SecretId=PROD_DB)
    pending = kg.admin.wait_for_pending(resource=PROD_DB)

    created = check_payload(one(receiver, "created", pending["id"]), kg, "created", pending["id"])
    # secops minus demo-app's owner bob
    assert sorted(created["recipients"]) == ["alice", "erin", "grace"], created["recipients"]
    assert created["request"]["state"] == "pending"
    assert created["request"]["resources"] == [PROD_DB]

    kg.admin.approve(pending["id"], comment="incident 4711")
    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    approved = check_payload(one(receiver, "approved", pending["id"]), kg, "approved", pending["id"])
    assert approved["actor"] == "alice" and approved["comment"] == "incident 4711", approved
    assert approved["recipients"] == ["bob"], "the owner hears how the request ended"
    assert approved["request"]["state"] == "approved"
    order = [d.event for d in receiver.all() if d.request_id == pending["id"]]
    assert order == ["created", "approved"], order


def test_denied_payload_goes_to_the_owner_group(start_gate, receiver):
    kg = start_gate(
        hold_rule("other-hold", identities=(OTHER_APP.name,), hold_window="1s"),
        owners={OTHER_APP.name: "payments-owners"},
        extra=notify(webhook(receiver.url)),
    )
    request_id = expect_held(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))
    created = check_payload(one(receiver, "created", request_id), kg, "created", request_id)
    # erin is secops but in the owning group: not asked
    assert sorted(created["recipients"]) == ["alice", "bob", "grace"], created["recipients"]

    kg.admin.deny(request_id, reason="not this week")
    denied = check_payload(one(receiver, "denied", request_id), kg, "denied", request_id)
    assert denied["actor"] == "alice" and denied["comment"] == "not this week", denied
    assert sorted(denied["recipients"]) == ["dave", "erin"], "every member of the owner group hears of it"
    assert denied["request"]["state"] == "denied"


def test_expired_payload_goes_to_the_owner(start_gate, receiver):
    kg = start_gate(hold_rule("short-lived", hold_window="1s", request_ttl="2s"), extra=notify(webhook(receiver.url)))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    expired = check_payload(one(receiver, "expired", request_id, timeout=10), kg, "expired", request_id)
    assert expired["recipients"] == ["bob"], expired["recipients"]
    assert expired["request"]["state"] == "expired"
    assert kg.admin.request(request_id)["state"] == "expired"


def test_escalated_payload_goes_to_the_escalation_group(start_gate, receiver):
    kg = start_gate(
        hold_rule("escalating", hold_window="1s", escalate_after="2s", escalate_to="leads"),
        extra=notify(webhook(receiver.url)),
    )
    started = time.monotonic()
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    created = check_payload(one(receiver, "created", request_id), kg, "created", request_id)
    assert "frank" not in created["recipients"], "the escalation group is asked only on escalation"

    escalated = check_payload(one(receiver, "escalated", request_id, timeout=10), kg, "escalated", request_id)
    assert time.monotonic() - started >= 1.9
    assert escalated["recipients"] == ["frank"], escalated["recipients"]
    assert escalated["request"]["escalated_at"], escalated["request"]
    assert escalated["request"]["state"] == "pending"


def test_bypassed_payload_goes_to_every_approver_of_the_rule(start_gate, receiver):
    kg = start_gate(
        hold_rule("prod-bg", break_glass=[DEMO_APP.name]),
        extra=notify(webhook(receiver.url)),
    )
    sm = with_header(kg.client(), BREAK_GLASS_HEADER, "INC-9 checkout down")
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    [queued] = kg.admin.call("GET", "/admin/v1/reviews").json()["reviews"]

    bypassed = check_payload(one(receiver, "bypassed", queued["id"]), kg, "bypassed", queued["id"])
    assert bypassed["actor"] == DEMO_APP.name, bypassed
    assert bypassed["comment"] == "INC-9 checkout down", bypassed
    assert sorted(bypassed["recipients"]) == ["alice", "bob", "erin", "grace"], bypassed["recipients"]
    assert bypassed["request"]["state"] == "bypassed"


def test_default_events_leave_out_reviewed(start_gate, receiver):
    kg = start_gate(
        hold_rule("quorum-2", approvals=2, hold_window="1s"),
        extra=notify(webhook(receiver.url, events=None)),
    )
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    one(receiver, "created", request_id)
    assert reviewed_ok(review(kg, request_id, ALICE))["outcome"]["result"] == "approval_counted"
    assert reviewed_ok(review(kg, request_id, ERIN))["outcome"]["result"] == "approved"
    one(receiver, "approved", request_id)
    time.sleep(0.5)
    assert [d.event for d in receiver.all()] == ["created", "approved"], [d.event for d in receiver.all()]


def test_slack_format_is_an_incoming_webhook_message(start_gate, receiver):
    kg = start_gate(
        hold_rule("prod-hold", hold_window="1s"),
        extra=notify(webhook(receiver.url, format="slack")),
    )
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    kg.admin.approve(request_id, comment="slack approved")

    deliveries = receiver.wait_for(lambda all_: all_ if len(all_) >= 2 else None)
    for d in deliveries:
        assert d.status == 200
        assert d.headers.get("content-type", "").startswith("application/json"), d.headers
        msg = d.json
        assert isinstance(msg, dict), d.text[:300]
        assert isinstance(msg.get("text"), str) and msg["text"].strip(), msg
        assert isinstance(msg.get("blocks"), list) and msg["blocks"], msg
        assert all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in msg["blocks"]), msg["blocks"]
        whole = json.dumps(msg)
        assert request_id in whole or DEMO_APP.name in whole, f"the message says which request: {msg}"
    created, approved = (json.dumps(d.json) for d in deliveries)
    assert DEMO_APP.name in created and PROD_DB in created, created
    assert "alice" in approved and "slack approved" in approved, approved


# --------------------------------------------------------------------------
# Delivery: retries, giving up, never blocking the data path


def test_a_503_is_retried_with_backoff_until_delivered(start_gate, receiver):
    receiver.fail_first(2, 503)
    kg = start_gate(hold_rule("prod-hold", hold_window="1s"), extra=notify(webhook(receiver.url)))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))

    attempts = receiver.wait_for(event="created", request_id=request_id, count=3, timeout=10)
    assert [d.status for d in attempts] == [503, 503, 200], [d.status for d in attempts]
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.25, f"retried after {gaps[0]:.2f}s: no backoff"
    assert gaps[1] >= gaps[0] * 1.2, f"backoff does not grow: gaps {gaps}"
    assert attempts[2].at - attempts[0].at < 8, gaps

    time.sleep(2)  # delivered: no further attempts
    assert len(receiver.matching("created", request_id)) == 3


def test_a_400_is_not_retried(start_gate, receiver):
    receiver.always(400)
    kg = start_gate(hold_rule("prod-hold", hold_window="1s"), extra=notify(webhook(receiver.url)))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    one(receiver, "created", request_id)
    kg.admin.approve(request_id)
    one(receiver, "approved", request_id)

    time.sleep(4)  # past 0.5 + 1 + 2 s of backoff: a retry would have come
    assert [(d.event, d.status) for d in receiver.all()] == [("created", 400), ("approved", 400)]


def test_max_attempts_bounds_retries_of_a_failing_receiver(start_gate, receiver):
    receiver.always(503)
    kg = start_gate(hold_rule("prod-hold", hold_window="1s"), extra=notify(webhook(receiver.url, max_attempts=2)))
    request_id = expect_held(lambda: kg.client().get_secret_value(SecretId=PROD_DB))
    receiver.wait_for(event="created", request_id=request_id, count=2)
    time.sleep(2.5)
    assert len(receiver.matching("created", request_id)) == 2


def approve_latencies(kg: Keygate, background, rounds: int = 3) -> list[float]:
    """Hold a prod read, approve it, and time approve -> the client's answer;
    also check the admin API answered at once. Returns the latencies."""
    latencies = []
    for _ in range(rounds):
        sm = kg.client()
        waiting = background.submit(sm.get_secret_value, SecretId=PROD_DB)
        pending = kg.admin.wait_for_pending(resource=PROD_DB)
        started = time.monotonic()
        kg.admin.approve(pending["id"])
        approve_took = time.monotonic() - started
        assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
        latencies.append(time.monotonic() - started)
        assert approve_took < 1.5, f"the approval call took {approve_took:.2f}s"
    return latencies


def allowed_latencies(kg: Keygate, rounds: int = 5) -> list[float]:
    sm = kg.client()
    out = []
    for _ in range(rounds):
        started = time.monotonic()
        assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
        out.append(time.monotonic() - started)
    return out


def hold_latency(kg: Keygate) -> float:
    """How long other-app's prod read (a 1 s hold) takes to come back held."""
    started = time.monotonic()
    request_id = expect_held(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))
    took = time.monotonic() - started
    kg.admin.deny(request_id, reason="clearing the way")
    return took


TIMING_RULES = hold_rule("prod-hold") + hold_rule("other-quick", identities=(OTHER_APP.name,), hold_window="1s")


def test_a_dead_or_hanging_receiver_never_delays_the_workload(start_gate, receiver, background):
    baseline = start_gate(TIMING_RULES)
    base_hold = hold_latency(baseline)
    base_approve = approve_latencies(baseline, background)
    base_allowed = allowed_latencies(baseline)
    baseline.stop()

    receiver.hang(6)  # answers nothing for 6 s: every attempt times out after 2 s
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    kg = start_gate(
        TIMING_RULES,
        extra=notify(
            webhook(dead, name="dead", events=None),
            webhook(receiver.url, name="hanging", events=None),
        ),
    )
    hooked_hold = hold_latency(kg)
    hooked_approve = approve_latencies(kg, background)
    hooked_allowed = allowed_latencies(kg)

    assert receiver.all(), "keygate did try the hanging receiver"
    slack = 1.0
    assert hooked_hold < base_hold + slack, (
        f"a 1 s hold took {hooked_hold:.2f}s with broken webhooks, {base_hold:.2f}s without"
    )
    assert max(hooked_approve) < max(base_approve) + slack, (
        f"approve -> answer took {hooked_approve} with broken webhooks, {base_approve} without"
    )
    assert max(hooked_allowed) < max(base_allowed) + slack, (hooked_allowed, base_allowed)
    assert max(hooked_approve) < 2.0, "anything near the webhook timeout means the data path waited on it"


# --------------------------------------------------------------------------
# No secret values


def test_no_secret_value_in_any_payload_or_the_event_stream(start_gate, receiver, event_streams, background):
    written = f"webhook-put-{uuid.uuid4().hex[:12]}"
    rules = (
        hold_rule("prod-bg", identities=(DEMO_APP.name, OTHER_APP.name), break_glass=[DEMO_APP.name], hold_window="1s")
        + hold_rule("put-hold", operations=("PutSecretValue",), resources=(PROD_API,), hold_window="1s")
        + hold_rule(
            "api-hold", resources=(PROD_API,), hold_window="1s", grant="window", grant_uses=2, grant_window="1m"
        )
    )
    kg = start_gate(
        rules,
        extra=notify(
            webhook(receiver.url, name="json", events=None),
            webhook(receiver.url.replace("/hook", "/slack"), name="slack", format="slack", events=None),
        ),
    )
    events = event_streams(kg)
    sm = kg.client()

    # held, approved, used twice (values flow back to the client each time)
    api_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_API))
    kg.admin.approve(api_id, comment="read it")
    for _ in range(2):
        assert sm.get_secret_value(SecretId=PROD_API)["SecretString"] == SECRETS[PROD_API]
    # a held write carrying a new value, approved and executed
    put_id = expect_held(lambda: sm.put_secret_value(SecretId=PROD_API, SecretString=written))
    kg.admin.approve(put_id)
    sm.put_secret_value(SecretId=PROD_API, SecretString=written)
    # break-glass read, then acknowledged
    glass = with_header(kg.client(), BREAK_GLASS_HEADER, "INC-1 all hands")
    assert glass.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    [queued] = kg.admin.call("GET", "/admin/v1/reviews").json()["reviews"]
    assert kg.admin.call("POST", f"/admin/v1/reviews/{queued['id']}/ack", {"comment": "seen"}).status == 200
    # a denied one, and a routine allowed read
    other_id = expect_held(lambda: kg.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))
    kg.admin.deny(other_id, reason="no")
    assert sm.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]

    # every event of every request reached both webhooks
    def delivered(all_: list[Delivery]):
        by_path = {"/hook": [], "/slack": []}
        for d in all_:
            by_path.setdefault(d.path, []).append(d)
        return all_ if len(by_path["/hook"]) >= 8 and len(by_path["/slack"]) >= 8 else None

    deliveries = receiver.wait_for(delivered, timeout=15)
    json_events = sorted({d.event for d in deliveries if d.path == "/hook"})
    assert {"created", "approved", "denied", "bypassed"} <= set(json_events), json_events
    events.wait_for("denied", other_id)

    markers = [*SECRET_MARKERS, written]
    places = {f"{d.path} #{i} ({d.event})": d.text for i, d in enumerate(receiver.all())}
    places["event stream"] = events.raw
    for place, text in places.items():
        for marker in markers:
            assert marker not in text, f"secret value {marker[:4]}... appears in {place}"
