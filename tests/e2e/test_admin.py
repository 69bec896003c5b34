"""Admin API: who may decide, and the error codes for everything else."""

from __future__ import annotations

import re

import pytest
from harness import ALICE, BOB, CAROL, OTHER_APP, PROD_DB, WORKLOAD_TOKEN, AdminClient, error_of, expect_held, http_call

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@pytest.fixture
def pending_id(quick_keygate) -> str:
    """A pending prod read by demo-app (whose owner is bob)."""
    return expect_held(lambda: quick_keygate.client().get_secret_value(SecretId=PROD_DB))


def approve(kg, request_id: str, token: str | None, body=None):
    return kg.admin.call("POST", f"/admin/v1/requests/{request_id}/approve", body or {}, token=token)


def test_healthz_answers_ok(keygate):
    resp = http_call(keygate.admin_url, "GET", "/healthz")
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}


def test_readyz_answers_ok_with_the_pending_count(quick_keygate, pending_id):
    resp = http_call(quick_keygate.admin_url, "GET", "/readyz")
    assert resp.status == 200
    assert resp.json() == {"status": "ok", "pending": 1}


def test_request_view_has_the_documented_fields(quick_keygate, pending_id):
    view = quick_keygate.admin.request(pending_id)

    assert view["id"] == pending_id
    assert view["identity"] == "demo-app"
    assert view["front"] == "aws"
    assert view["operation"] == "GetSecretValue"
    assert view["class"]
    assert view["resources"] == [PROD_DB]
    assert isinstance(view["parameters"], dict)
    assert view["state"] == "pending"
    assert view["rule"] == "prod-read"
    assert view["reasons"] and all(isinstance(r, str) for r in view["reasons"])
    assert view["justification"] is None
    assert view["approvals"] == []
    assert view["denial"] is None
    assert view["approver_group"] == "secops"
    assert view["required_approvals"] == 1
    assert RFC3339.match(view["created_at"]), view["created_at"]
    assert RFC3339.match(view["expires_at"]), view["expires_at"]
    assert view["grant"] is None


def test_list_filters_by_state(quick_keygate, pending_id):
    admin = quick_keygate.admin
    assert [r["id"] for r in admin.requests("pending")] == [pending_id]
    assert admin.requests("approved") == []

    admin.approve(pending_id)

    assert admin.requests("pending") == []
    assert [r["id"] for r in admin.requests("approved")] == [pending_id]
    assert admin.requests("denied") == []
    assert admin.requests("expired") == []


@pytest.mark.parametrize("token", [None, "kg-not-a-token"], ids=["missing", "wrong"])
def test_admin_api_needs_a_valid_token(keygate, token):
    resp = keygate.admin.call("GET", "/admin/v1/requests", token=token)
    assert resp.status == 401
    error_of(resp)


def test_approver_outside_the_rule_group_cannot_approve(quick_keygate, pending_id):
    resp = approve(quick_keygate, pending_id, CAROL)

    assert resp.status == 403, resp.text
    error_of(resp)
    assert quick_keygate.admin.request(pending_id)["state"] == "pending"


def test_owner_of_the_workload_cannot_approve_its_request(quick_keygate, pending_id):
    resp = approve(quick_keygate, pending_id, BOB)

    assert resp.status == 403, resp.text
    error_of(resp)
    assert quick_keygate.admin.request(pending_id)["state"] == "pending"
    # another secops member can
    assert quick_keygate.admin.approve(pending_id)["state"] == "approved"


def test_workload_token_is_refused_on_admin_api(quick_keygate, pending_id):
    resp = approve(quick_keygate, pending_id, WORKLOAD_TOKEN)
    assert resp.status == 403, resp.text
    error_of(resp)

    listing = quick_keygate.admin.call("GET", "/admin/v1/requests", token=WORKLOAD_TOKEN)
    assert listing.status == 403, listing.text

    assert quick_keygate.admin.request(pending_id)["state"] == "pending"


def test_deny_without_reason_is_rejected(quick_keygate, pending_id):
    resp = quick_keygate.admin.call("POST", f"/admin/v1/requests/{pending_id}/deny", {})

    assert resp.status == 400, resp.text
    error_of(resp)
    assert quick_keygate.admin.request(pending_id)["state"] == "pending"


def test_approving_twice_conflicts(quick_keygate, pending_id):
    quick_keygate.admin.approve(pending_id)

    again = approve(quick_keygate, pending_id, ALICE)

    assert again.status == 409, again.text
    error_of(again)


def test_denying_an_approved_request_conflicts(quick_keygate, pending_id):
    quick_keygate.admin.approve(pending_id)

    resp = quick_keygate.admin.call("POST", f"/admin/v1/requests/{pending_id}/deny", {"reason": "changed my mind"})

    assert resp.status == 409, resp.text
    assert quick_keygate.admin.request(pending_id)["state"] == "approved"


def test_unknown_request_is_not_found(keygate):
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path, body in [
        ("GET", f"/admin/v1/requests/{unknown}", None),
        ("POST", f"/admin/v1/requests/{unknown}/approve", {}),
        ("POST", f"/admin/v1/requests/{unknown}/deny", {"reason": "x"}),
    ]:
        resp = keygate.admin.call(method, path, body)
        assert resp.status == 404, f"{method} {path}: {resp.status} {resp.text}"
        error_of(resp)


def test_bob_may_approve_requests_of_workloads_he_does_not_own(quick_keygate):
    request_id = expect_held(lambda: quick_keygate.client(OTHER_APP).get_secret_value(SecretId=PROD_DB))

    view = AdminClient(quick_keygate.admin_url, BOB).approve(request_id, comment="ok")

    assert view["state"] == "approved"
    assert view["approvals"][0]["approver"] == "bob"
