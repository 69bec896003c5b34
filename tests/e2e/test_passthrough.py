"""Routine traffic passes straight through; policy denials answer at once.

Every test runs twice: with keygate calling AWS through the SDK's client
(the default) and through its direct client (`upstream.client = "direct"`)."""

from __future__ import annotations

import json

import pytest

from harness import DEMO_APP, OTHER_APP, SECRETS, client_error, describe, strip_metadata


@pytest.fixture(params=["sdk", "direct"])
def keygate(request, start_keygate):
    """keygate with the default test config and each AWS upstream client."""
    kg = start_keygate(aws_client=request.param)
    assert f"{request.param} client" in kg.log().lower(), f"keygate did not start its {request.param} client:\n{kg.log()}"
    return kg


NO_DESTRUCTIVE_REASON = "deleting secrets and changing resource policies is not allowed through keygate"


def test_routine_read_with_boto3_returns_upstream_result_unchanged(keygate, upstream):
    via_keygate = strip_metadata(keygate.client().get_secret_value(SecretId="demo/db/password"))
    direct = strip_metadata(upstream.client().get_secret_value(SecretId="demo/db/password"))

    assert via_keygate["SecretString"] == SECRETS["demo/db/password"]
    assert via_keygate == direct


def test_routine_read_with_aws_cli(keygate):
    proc = keygate.aws_cli("secretsmanager", "get-secret-value", "--secret-id", "demo/db/password")

    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout)
    assert result["Name"] == "demo/db/password"
    assert result["SecretString"] == SECRETS["demo/db/password"]


def test_list_secrets_passes_through(keygate, upstream):
    via_keygate = keygate.client().list_secrets()["SecretList"]
    direct = upstream.client().list_secrets()["SecretList"]

    assert sorted(s["Name"] for s in via_keygate) == sorted(SECRETS)
    assert sorted(s["ARN"] for s in via_keygate) == sorted(s["ARN"] for s in direct)


def test_describe_secret_passes_through(keygate, upstream):
    via_keygate = strip_metadata(keygate.client().describe_secret(SecretId="demo/api/key"))
    direct = strip_metadata(upstream.client().describe_secret(SecretId="demo/api/key"))

    assert via_keygate["Name"] == "demo/api/key"
    assert via_keygate["ARN"] == direct["ARN"]
    assert "SecretString" not in via_keygate


def test_write_through_keygate_invalidates_the_cache(keygate, upstream):
    sm = keygate.client()
    assert sm.get_secret_value(SecretId="demo/api/key")["SecretString"] == SECRETS["demo/api/key"]

    sm.put_secret_value(SecretId="demo/api/key", SecretString="demo-api-key-rotated")

    assert upstream.client().get_secret_value(SecretId="demo/api/key")["SecretString"] == "demo-api-key-rotated"
    assert sm.get_secret_value(SecretId="demo/api/key")["SecretString"] == "demo-api-key-rotated"


def test_delete_is_denied_by_policy_with_the_rule_reason(keygate, upstream):
    code, message, status = client_error(lambda: keygate.client().delete_secret(SecretId="demo/api/key"))

    assert (code, status) == ("AccessDeniedException", 400)
    assert NO_DESTRUCTIVE_REASON in message
    # nothing reached the upstream
    assert upstream.client().describe_secret(SecretId="demo/api/key").get("DeletedDate") is None


def test_delete_denied_by_policy_with_aws_cli(keygate):
    proc = keygate.aws_cli("secretsmanager", "delete-secret", "--secret-id", "demo/api/key")

    assert proc.returncode != 0, describe(proc)
    assert "AccessDeniedException" in proc.stderr, describe(proc)
    assert NO_DESTRUCTIVE_REASON in proc.stderr, describe(proc)


def test_request_matching_no_rule_is_denied_by_default(keygate):
    # other-app has no rule for demo/* reads; the policy default is deny
    code, _message, status = client_error(
        lambda: keygate.client(OTHER_APP).get_secret_value(SecretId="demo/db/password")
    )
    assert (code, status) == ("AccessDeniedException", 400)


def test_operation_without_rule_is_denied_by_default(keygate):
    code, _message, status = client_error(
        lambda: keygate.client(DEMO_APP).create_secret(Name="demo/new", SecretString="x")
    )
    assert (code, status) == ("AccessDeniedException", 400)


def test_upstream_errors_pass_through(keygate):
    code, _message, status = client_error(lambda: keygate.client().get_secret_value(SecretId="demo/does-not-exist"))
    assert code == "ResourceNotFoundException"
    assert status in (400, 404)  # AWS answers 400, moto 404
