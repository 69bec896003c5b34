"""Authentication and protocol errors on the workload listener: AWS's error
shapes and status codes, never a 500, never a hang."""

from __future__ import annotations

import datetime
import json

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from harness import REGION, DEMO_APP, Identity, assert_aws_error, client_error, http_call

GET_DEMO = json.dumps({"SecretId": "demo/db/password"})


def test_unknown_access_key_is_unrecognized_client(keygate):
    sm = keygate.client(access_key="AKIAUNKNOWNKEY000000", secret_key="whatever")
    code, _message, status = client_error(lambda: sm.get_secret_value(SecretId="demo/db/password"))
    assert (code, status) == ("UnrecognizedClientException", 400)


def test_wrong_secret_key_is_invalid_signature(keygate):
    sm = keygate.client(DEMO_APP, secret_key="not-the-secret-key")
    code, _message, status = client_error(lambda: sm.get_secret_value(SecretId="demo/db/password"))
    assert (code, status) == ("InvalidSignatureException", 400)


def test_wrong_secret_key_error_shape_on_the_wire(keygate):
    impostor = Identity("demo-app", DEMO_APP.access_key, "not-the-secret-key")
    resp = keygate.raw("GetSecretValue", GET_DEMO, identity=impostor)
    assert_aws_error(resp, "InvalidSignatureException")


def test_clock_skew_over_five_minutes_is_signature_expired(keygate):
    ten_minutes_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    resp = keygate.raw("GetSecretValue", GET_DEMO, signed_at=ten_minutes_ago)
    assert_aws_error(resp, "InvalidSignatureException", message_contains="Signature expired")


def test_clock_skew_into_the_future_is_rejected(keygate):
    in_ten_minutes = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(minutes=10)
    resp = keygate.raw("GetSecretValue", GET_DEMO, signed_at=in_ten_minutes)
    message = assert_aws_error(resp, "InvalidSignatureException")
    # AWS words this one "Signature not yet current"
    assert "Signature expired" in message or "Signature not yet current" in message, message


def test_small_clock_skew_is_accepted(keygate):
    two_minutes_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=2)
    resp = keygate.raw("GetSecretValue", GET_DEMO, signed_at=two_minutes_ago)
    assert resp.status == 200, resp.text[:300]
    assert resp.json()["Name"] == "demo/db/password"


def test_missing_authorization_is_missing_authentication_token(keygate):
    resp = keygate.raw("GetSecretValue", GET_DEMO, sign=False)
    assert_aws_error(resp, "MissingAuthenticationTokenException", status=403)


def test_malformed_authorization_is_incomplete_signature(keygate):
    resp = keygate.raw(
        "GetSecretValue",
        GET_DEMO,
        sign=False,
        headers={"Authorization": "AWS4-HMAC-SHA256 this-is-not-a-signature", "X-Amz-Date": "20240101T000000Z"},
    )
    assert_aws_error(resp, "IncompleteSignatureException")


def test_signature_over_a_different_body_is_invalid(keygate):
    # sign one body, send another: the payload hash no longer matches
    request = AWSRequest(
        method="POST",
        url=keygate.endpoint + "/",
        data=GET_DEMO.encode(),
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"},
    )
    SigV4Auth(Credentials(DEMO_APP.access_key, DEMO_APP.secret_key), "secretsmanager", REGION).add_auth(request)
    tampered = json.dumps({"SecretId": "demo/api/key"})
    resp = http_call(keygate.endpoint, "POST", "/", body=tampered, headers=dict(request.headers.items()))
    assert_aws_error(resp, "InvalidSignatureException")


def test_malformed_json_body_is_serialization_exception(keygate):
    resp = keygate.raw("GetSecretValue", '{"SecretId": "demo/db/password"')
    assert_aws_error(resp, "SerializationException")


def test_unknown_operation_is_unknown_operation_exception(keygate):
    resp = keygate.raw("FrobnicateSecret", GET_DEMO)
    assert_aws_error(resp, "UnknownOperationException")


def test_valid_raw_request_succeeds(keygate):
    # the control for the cases above: the same signer, nothing broken
    resp = keygate.raw("GetSecretValue", GET_DEMO)
    assert resp.status == 200, resp.text[:300]
    assert resp.json()["Name"] == "demo/db/password"
