"""sys/* through keygate: every sys path is an operation the policy decides
(and the audit records); only the bao CLI's mount preflight is answered by
keygate itself."""

from __future__ import annotations

import pytest
from harness import VAULT_ROOT_TOKEN, assert_vault_error, raw_vault_call


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/v1/sys/mounts"), ("GET", "/v1/sys/policies/acl/admin"), ("POST", "/v1/sys/mounts/kv-evil")],
    ids=["list-mounts", "read-policy", "enable-engine"],
)  # fmt: skip
def test_sys_admin_paths_are_denied_by_default(vault_keygate, vault_upstream, method, path):
    body = {"type": "kv"} if method == "POST" else None

    resp = vault_keygate.vault_raw(method, path, body=body)

    assert_vault_error(resp, 403)
    mounts = raw_vault_call(vault_upstream.url, "GET", "/v1/sys/mounts", token=VAULT_ROOT_TOKEN).json()["data"]
    assert "kv-evil/" not in mounts


@pytest.mark.parametrize("path", ["/v1/sys/health", "/v1/sys/seal-status"])
def test_sys_health_is_decided_by_policy_and_audited(vault_keygate, path):
    # the test policy has no rule for sys.health: default deny
    resp = vault_keygate.vault_raw("GET", path)

    assert_vault_error(resp, 403)
    events = [e for e in vault_keygate.admin.audit() if e["front"] == "vault" and e["operation"] == "sys.health"]
    assert [e["kind"] for e in events] == ["request.denied"], events
