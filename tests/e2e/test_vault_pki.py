"""PKI through keygate with hvac: a certificate for the workload's own service
name with a short TTL is routine; wildcards, other names and long TTLs are
held; certificates are never served from a cache."""

from __future__ import annotations

import time

from harness import OTHER_APP_TOKEN, expect_vault_held, issue_cert, strings_in

OWN_NAME = "demo-app.svc.cluster.local"
CERT_RESOURCE = "pki/issue/svc"


def assert_certificate(cert: dict) -> None:
    assert "BEGIN CERTIFICATE" in cert["certificate"], cert.keys()
    assert cert["serial_number"]
    assert cert["private_key"], "pki/issue returns the new key to the workload"


def test_cert_for_own_service_name_with_short_ttl_passes(vault_keygate):
    cert = issue_cert(vault_keygate.vault(), OWN_NAME, ttl="1h")

    assert_certificate(cert)
    remaining = cert["expiration"] - time.time()
    assert 3000 < remaining <= 3600 + 60, f"requested ttl 1h, certificate expires in {remaining:.0f}s"


def test_two_issues_give_two_certificates_never_cached(vault_keygate):
    vault = vault_keygate.vault()

    first = issue_cert(vault, OWN_NAME, ttl="1h")
    second = issue_cert(vault, OWN_NAME, ttl="1h")

    assert first["serial_number"] != second["serial_number"]


def test_wildcard_cert_is_held_with_the_names_in_parameters(quick_vault_keygate):
    request_id = expect_vault_held(lambda: issue_cert(quick_vault_keygate.vault(), "*.svc.cluster.local", ttl="1h"))

    view = quick_vault_keygate.admin.request(request_id)
    assert view["state"] == "pending"
    assert (view["front"], view["operation"]) == ("vault", "pki.issue")
    assert view["resources"] == [CERT_RESOURCE]
    assert view["rule"] == "vault-cert-hold"
    assert any("*.svc.cluster.local" in s for s in strings_in(view["parameters"])), view["parameters"]


def test_cert_with_ttl_over_the_rule_maximum_is_held(quick_vault_keygate):
    request_id = expect_vault_held(lambda: issue_cert(quick_vault_keygate.vault(), OWN_NAME, ttl="1000h"))

    view = quick_vault_keygate.admin.request(request_id)
    assert (view["operation"], view["rule"]) == ("pki.issue", "vault-cert-hold")
    assert any("1000h" in s for s in strings_in(view["parameters"])), view["parameters"]


def test_cert_with_an_alt_name_outside_own_names_is_held(quick_vault_keygate):
    request_id = expect_vault_held(
        lambda: issue_cert(quick_vault_keygate.vault(), OWN_NAME, ttl="1h", alt_names="payments.svc.cluster.local")
    )

    assert quick_vault_keygate.admin.request(request_id)["rule"] == "vault-cert-hold"


def test_own_name_rule_is_per_identity(quick_vault_keygate):
    other = quick_vault_keygate.vault(OTHER_APP_TOKEN)

    assert_certificate(issue_cert(other, "other-app.svc.cluster.local", ttl="1h"))
    request_id = expect_vault_held(lambda: issue_cert(other, OWN_NAME, ttl="1h"))

    assert quick_vault_keygate.admin.request(request_id)["identity"] == "other-app"


def test_held_wildcard_cert_is_issued_once_approved_while_hvac_waits(vault_keygate, background):
    waiting = background.submit(issue_cert, vault_keygate.vault(), "*.svc.cluster.local", ttl="1h")
    pending = vault_keygate.admin.wait_for_pending(operation="pki.issue", resource=CERT_RESOURCE)

    vault_keygate.admin.approve(pending["id"], comment="ingress wildcard, CHG-77")

    cert = waiting.result(timeout=30)
    assert_certificate(cert)
