"""TLS towards keygate's upstreams: [upstream.vault.tls] and [upstream.tls].

Real peers: an OpenBao dev server with a second listener that serves TLS and
requires a client certificate; moto_server serving HTTPS itself; a small
TLS-terminating relay that requires a client certificate in front of a plain
moto. Real clients (hvac, boto3) talk plain HTTP to keygate's workload
listener; keygate talks TLS (and mTLS) to the upstreams.

Every refusal must be fast and in the client's wire format (Vault 502,
AWS 503 ServiceUnavailable), never a hang, and verification is never turned
off by VAULT_SKIP_VERIFY / VAULT_CACERT in keygate's environment.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import hvac
import pytest
from certs import Pki
from conftest import KEYGATES, OPENBAOS
from harness import (
    SECRETS,
    describe,
    free_port,
    kv_read,
    client_error,
    vault_error,
    vault_message,
)
from upstream_tls_peers import (
    TLS_KV_PATH,
    MtlsProxy,
    TlsMoto,
    TlsOpenBao,
    UpstreamTlsKeygate,
    timed,
    upstream_tls_keys,
)

VAULT_UNAVAILABLE = "keygate: upstream Vault unavailable"
AWS_UNAVAILABLE = "keygate: the upstream secret store is unavailable"
DEMO_SECRET = "demo/db/password"  # demo-app may read it (rule demo-read)
# boto3 makes exactly one call to keygate (its default would retry a 503).
ONE_ATTEMPT = {"mode": "standard", "total_max_attempts": 1}
FAST = 3.0  # seconds: a refused handshake is reported at once, not after a timeout
# What a log line about a failed handshake mentions (rustls / reqwest / hyper wording).
TLS_WORDS = re.compile(r"certificate|tls|handshake|alert|UnknownIssuer", re.I)


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tls_openbao(tmp_path_factory, pki: Pki) -> TlsOpenBao:
    server = TlsOpenBao(tmp_path_factory.mktemp("openbao-tls"), pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bao(request, tls_openbao: TlsOpenBao) -> TlsOpenBao:
    """The TLS OpenBao, with its log attached to a failing test's report."""
    request.node.stash.setdefault(OPENBAOS, []).append(tls_openbao)
    return tls_openbao


@pytest.fixture
def vault_secret(bao: TlsOpenBao) -> dict[str, str]:
    """A KV v2 secret at secret/demo/tls-upstream, fresh for each test
    (written through OpenBao's plain listener)."""
    data = {"password": f"over-mtls-{uuid.uuid4().hex[:12]}"}
    bao.seed_secret(data)
    return data


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory, pki: Pki) -> TlsMoto:
    server = TlsMoto(tmp_path_factory.mktemp("moto-tls"), pki)
    server.start()
    sm = server.client()
    for name, value in SECRETS.items():
        sm.create_secret(Name=name, SecretString=value)
    yield server
    server.stop()


@pytest.fixture
def mtls_proxy(upstream, pki: Pki) -> MtlsProxy:
    """A relay requiring a client certificate from the test CA, in front of
    the session moto (seeded with the demo secrets for this test)."""
    proxy = MtlsProxy(pki.server, pki.ca, ("127.0.0.1", upstream.port)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def start_kg(request, keygate_bin: Path, tmp_path: Path):
    """start_kg(**opts) -> a running keygate (UpstreamTlsKeygate options);
    start_kg.make(**opts) -> one that is configured but not started (for
    `keygate check` and start-ups that must fail). All are stopped afterwards.

    keygate's AWS_ENDPOINT_URL_SECRETS_MANAGER points at a port where nothing
    listens: only `aws_endpoint` ([upstream] endpoint) can reach a peer."""
    started: list[UpstreamTlsKeygate] = []
    request.node.stash[KEYGATES] = started

    def make(**opts) -> UpstreamTlsKeygate:
        opts.setdefault("cache_ttl", "0s")
        kg = UpstreamTlsKeygate(
            keygate_bin, tmp_path / f"keygate{len(started)}", f"http://127.0.0.1:{free_port()}", **opts
        )
        started.append(kg)
        return kg

    def start(**opts) -> UpstreamTlsKeygate:
        return make(**opts).start()

    start.make = make
    yield start
    for kg in started:
        kg.stop()


def tls_keys(pki: Pki, *, ca: bool = True, client: bool = True, **extra) -> dict:
    return upstream_tls_keys(ca_bundle=pki.ca if ca else None, client=pki.spiffe if client else None, **extra)


def expect_vault_502(kg: UpstreamTlsKeygate) -> str:
    """hvac's KV read through keygate must get keygate's 502 quickly; returns
    the log keygate wrote meanwhile."""
    mark = kg.log_mark()
    exc, elapsed = timed(lambda: vault_error(lambda: kv_read(kg.vault(), TLS_KV_PATH)))
    message = vault_message(exc)
    assert isinstance(exc, hvac.exceptions.BadGateway), f"expected 502, got {type(exc).__name__}: {message}"
    assert VAULT_UNAVAILABLE in message, message
    assert elapsed < FAST, f"the 502 took {elapsed:.1f}s: a refused TLS handshake must be reported at once"
    return kg.log_lines_since(mark)


def expect_aws_503(kg: UpstreamTlsKeygate) -> str:
    """boto3's GetSecretValue through keygate must get ServiceUnavailable (503)
    quickly; returns the log keygate wrote meanwhile."""
    mark = kg.log_mark()
    (code, message, status), elapsed = timed(
        lambda: client_error(lambda: kg.client(retries=ONE_ATTEMPT).get_secret_value(SecretId=DEMO_SECRET))
    )
    assert (code, status) == ("ServiceUnavailable", 503), f"expected 503 ServiceUnavailable, got {code} {status}: {message}"
    assert AWS_UNAVAILABLE in message, message
    assert elapsed < FAST, f"the 503 took {elapsed:.1f}s: a refused TLS handshake must be reported at once"
    return kg.log_lines_since(mark)


def unavailable_lines(log: str, marker: str) -> list[str]:
    return [line for line in log.splitlines() if marker in line]


def assert_logged_tls_failure(log: str, marker: str) -> None:
    """keygate logged the upstream failure (a WARN line with `marker`), and
    some WARN/ERROR line it wrote meanwhile says that TLS was the problem: an
    operator must be able to tell a refused handshake from a stopped upstream."""
    lines = unavailable_lines(log, marker)
    assert lines, f"keygate logged no {marker!r} line:\n{log}"
    assert any(" WARN " in line or " ERROR " in line for line in lines), lines
    loud = [line for line in log.splitlines() if " WARN " in line or " ERROR " in line]
    assert any(TLS_WORDS.search(line) for line in loud), (
        "nothing keygate logged says the upstream failure was a TLS/certificate problem:\n" + "\n".join(loud)
    )


def warn_lines(kg: UpstreamTlsKeygate, key: str) -> list[str]:
    return [line for line in kg.log().splitlines() if " WARN " in line and key in line]


# --------------------------------------------------------------------------
# The peers themselves (so that the refusals below mean something)


def test_openbao_tls_listener_requires_a_client_certificate(bao: TlsOpenBao, pki: Pki, vault_secret):
    with_cert = bao.tls_client(pki.spiffe.pair())
    assert with_cert.secrets.kv.v2.read_secret_version(
        path=TLS_KV_PATH, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"] == vault_secret
    with pytest.raises(Exception) as refused:
        bao.tls_client(None).secrets.kv.v2.read_secret_version(
            path=TLS_KV_PATH, mount_point="secret", raise_on_deleted_version=True
        )
    assert "SSL" in type(refused.value).__name__ or "certificate" in str(refused.value).lower(), refused.value


# --------------------------------------------------------------------------
# Vault: [upstream.vault.tls] with a static token


def test_vault_read_over_mtls_with_ca_bundle_and_client_certificate(start_kg, bao, pki, vault_secret):
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=tls_keys(pki))

    assert kv_read(kg.vault(), TLS_KV_PATH) == vault_secret
    assert not warn_lines(kg, "insecure_skip_verify"), "no insecure warning without insecure_skip_verify"


@pytest.mark.parametrize(
    "case",
    ["no-client-cert", "client-cert-from-another-ca", "no-ca-bundle", "ca-bundle-of-another-ca", "no-tls-table"],
)
def test_vault_refused_handshake_gives_fast_502(start_kg, bao, pki, vault_secret, case):
    vault_tls = {
        "no-client-cert": tls_keys(pki, client=False),
        "client-cert-from-another-ca": upstream_tls_keys(ca_bundle=pki.ca, client=pki.wrong_ca_client),
        "no-ca-bundle": tls_keys(pki, ca=False),
        "ca-bundle-of-another-ca": upstream_tls_keys(ca_bundle=pki.wrong_ca, client=pki.spiffe),
        "no-tls-table": None,
    }[case]
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=vault_tls)

    log = expect_vault_502(kg)

    assert_logged_tls_failure(log, "upstream Vault unavailable")


@pytest.mark.parametrize("tls_table", ["client-cert-only", "none"])
def test_vault_env_does_not_loosen_verification(start_kg, bao, pki, vault_secret, tls_table):
    """VAULT_SKIP_VERIFY / VAULT_CACERT (and the client-certificate variables)
    in keygate's own environment are ignored."""
    env = {
        "VAULT_SKIP_VERIFY": "1",
        "VAULT_CACERT": str(pki.ca),
        "VAULT_CLIENT_CERT": str(pki.spiffe.cert),
        "VAULT_CLIENT_KEY": str(pki.spiffe.key),
        "BAO_SKIP_VERIFY": "1",
        "BAO_CACERT": str(pki.ca),
    }
    vault_tls = tls_keys(pki, ca=False) if tls_table == "client-cert-only" else None
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=vault_tls, extra_env=env)

    expect_vault_502(kg)


def test_vault_insecure_skip_verify_works_and_warns_at_every_start(start_kg, bao, pki, vault_secret):
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=tls_keys(pki, ca=False, insecure_skip_verify=True))

    assert kv_read(kg.vault(), TLS_KV_PATH) == vault_secret
    assert len(warn_lines(kg, "insecure_skip_verify")) == 1, kg.log()

    kg.stop()
    kg.start()
    assert kv_read(kg.vault(), TLS_KV_PATH) == vault_secret
    assert len(warn_lines(kg, "insecure_skip_verify")) == 2, "warned again at the second start"


def test_vault_insecure_skip_verify_still_needs_the_client_certificate(start_kg, bao, pki, vault_secret):
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=upstream_tls_keys(insecure_skip_verify=True))

    expect_vault_502(kg)


# --------------------------------------------------------------------------
# Vault: AppRole login, renewal and pass-through lookup-self over mTLS (vaultrs)


def test_approle_login_and_renewal_over_mtls(start_kg, bao, pki, vault_secret):
    role = bao.approle(token_ttl="2s")
    kg = start_kg(
        vault_addr=bao.tls_url,
        vault_approle=role,
        vault_tls=tls_keys(pki),
        extra_env={"KEYGATE_LOG": "info,keygate=debug"},
    )

    assert kv_read(kg.vault(), TLS_KV_PATH) == vault_secret
    time.sleep(3)  # past the 2 s token TTL: only renewal (or a new login) over mTLS keeps it valid
    assert kv_read(kg.vault(), TLS_KV_PATH) == vault_secret
    log = kg.log()
    assert "renewed keygate's Vault token" in log or "logged in to Vault again with AppRole" in log, log
    assert "cannot renew or log in to Vault" not in log, log


@pytest.mark.parametrize("case", ["no-ca-bundle-vault-env-trusts-ca", "no-client-cert-vault-env-has-one", "no-tls-table"])
def test_approle_login_without_trust_or_client_certificate_refuses_to_start(start_kg, bao, pki, case):
    env = {}
    if case == "no-ca-bundle-vault-env-trusts-ca":
        vault_tls = tls_keys(pki, ca=False)
        env = {"VAULT_SKIP_VERIFY": "true", "VAULT_CACERT": str(pki.ca)}
    elif case == "no-client-cert-vault-env-has-one":
        vault_tls = tls_keys(pki, client=False)
        env = {"VAULT_CLIENT_CERT": str(pki.spiffe.cert), "VAULT_CLIENT_KEY": str(pki.spiffe.key)}
    else:
        vault_tls = None
    kg = start_kg.make(vault_addr=bao.tls_url, vault_approle=bao.approle(), vault_tls=vault_tls, extra_env=env)

    result, elapsed = timed(kg.start_expecting_failure)

    assert result.returncode != 0, result.stdout
    assert "AppRole login" in result.stdout, f"keygate did not say the AppRole login failed:\n{result.stdout}"
    assert elapsed < 10, f"refusing took {elapsed:.1f}s"
    loud = [line for line in result.stdout.splitlines() if " ERROR " in line or " WARN " in line or "error:" in line]
    assert any(TLS_WORDS.search(line) for line in loud), (
        "nothing keygate logged says the AppRole login failed in TLS:\n" + "\n".join(loud)
    )


def test_passthrough_lookup_self_over_mtls(start_kg, bao, pki, vault_secret):
    root = bao.client()
    root.sys.create_or_update_policy(
        name="app-read", policy='path "secret/data/demo/*" {\n  capabilities = ["read"]\n}\n'
    )
    token = root.auth.token.create(policies=["app-read"], display_name="ci", ttl="10m")["auth"]["client_token"]
    kg = start_kg(vault_addr=bao.tls_url, vault_tls=tls_keys(pki), vault_passthrough=True)

    assert kv_read(kg.vault(token), TLS_KV_PATH) == vault_secret

    no_cert = start_kg(vault_addr=bao.tls_url, vault_tls=tls_keys(pki, client=False), vault_passthrough=True)
    exc = vault_error(lambda: kv_read(no_cert.vault(token), TLS_KV_PATH))
    assert isinstance(exc, hvac.exceptions.BadGateway), f"lookup-self without a client certificate: {type(exc).__name__} {vault_message(exc)}"


# --------------------------------------------------------------------------
# AWS: [upstream] endpoint = https://... and [upstream.tls]


# The AWS cases run with both upstream clients: the SDK's and keygate's
# direct one (`upstream.client = "direct"`), which share the TLS connector.
AWS_CLIENTS = pytest.mark.parametrize("aws_client", ["sdk", "direct"])


@AWS_CLIENTS
def test_aws_endpoint_over_tls_with_ca_bundle(start_kg, tls_moto, pki, aws_client):
    kg = start_kg(aws_endpoint=tls_moto.url, aws_tls=upstream_tls_keys(ca_bundle=pki.ca), aws_client=aws_client)

    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    assert not warn_lines(kg, "insecure_skip_verify")


@AWS_CLIENTS
@pytest.mark.parametrize("case", ["no-tls-table", "ca-bundle-of-another-ca"])
def test_aws_untrusted_endpoint_gives_fast_503(start_kg, tls_moto, pki, case, aws_client):
    aws_tls = None if case == "no-tls-table" else upstream_tls_keys(ca_bundle=pki.wrong_ca)
    kg = start_kg(aws_endpoint=tls_moto.url, aws_tls=aws_tls, aws_client=aws_client)

    log = expect_aws_503(kg)

    assert_logged_tls_failure(log, "upstream unavailable")


def test_aws_insecure_skip_verify_works_and_warns_at_every_start(start_kg, tls_moto):
    kg = start_kg(aws_endpoint=tls_moto.url, aws_tls=upstream_tls_keys(insecure_skip_verify=True))

    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    assert len(warn_lines(kg, "insecure_skip_verify")) == 1, kg.log()

    kg.stop()
    kg.start()
    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    assert len(warn_lines(kg, "insecure_skip_verify")) == 2, "warned again at the second start"


@AWS_CLIENTS
def test_aws_endpoint_over_mtls_with_client_certificate(start_kg, mtls_proxy, pki, aws_client):
    kg = start_kg(aws_endpoint=mtls_proxy.url, aws_tls=tls_keys(pki), aws_client=aws_client)

    assert kg.client().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == SECRETS[DEMO_SECRET]
    assert mtls_proxy.accepted >= 1 and not mtls_proxy.failures, mtls_proxy.failures


@AWS_CLIENTS
@pytest.mark.parametrize("case", ["no-client-cert", "client-cert-from-another-ca", "no-ca-bundle"])
def test_aws_mtls_refused_gives_fast_503(start_kg, mtls_proxy, pki, case, aws_client):
    aws_tls = {
        "no-client-cert": tls_keys(pki, client=False),
        "client-cert-from-another-ca": upstream_tls_keys(ca_bundle=pki.ca, client=pki.wrong_ca_client),
        "no-ca-bundle": tls_keys(pki, ca=False),
    }[case]
    kg = start_kg(aws_endpoint=mtls_proxy.url, aws_tls=aws_tls, aws_client=aws_client)

    log = expect_aws_503(kg)

    assert_logged_tls_failure(log, "upstream unavailable")
    assert mtls_proxy.accepted == 0, "no handshake may complete"


# --------------------------------------------------------------------------
# Config errors: `keygate check` exits 64 and names the key


@pytest.mark.parametrize(
    "table, keys, names",
    [
        ("vault", {"ca_bundle": "missing.pem"}, "upstream.vault.tls.ca_bundle"),
        ("vault", {"client_cert": "CLIENT_CERT"}, "upstream.vault.tls"),
        ("vault", {"client_key": "CLIENT_KEY"}, "upstream.vault.tls"),
        ("vault", {"client_cert": "CLIENT_CERT", "client_key": "missing.key"}, "upstream.vault.tls.client_key"),
        ("vault", {"ca_file": "CA"}, "ca_file"),
        ("aws", {"ca_bundle": "missing.pem"}, "upstream.tls.ca_bundle"),
        ("aws", {"client_key": "CLIENT_KEY"}, "upstream.tls"),
        ("aws", {"client_cert": "missing.pem", "client_key": "CLIENT_KEY"}, "upstream.tls.client_cert"),
    ],
)
def test_check_rejects_bad_upstream_tls_settings(start_kg, pki, tmp_path, table, keys, names):
    real = {"CLIENT_CERT": pki.spiffe.cert, "CLIENT_KEY": pki.spiffe.key, "CA": pki.ca}
    keys = {k: real.get(v) or str(tmp_path / v) for k, v in keys.items()}
    if table == "vault":
        kg = start_kg.make(vault_addr="https://127.0.0.1:8200", vault_tls=keys)
    else:
        kg = start_kg.make(aws_endpoint="https://127.0.0.1:8443", aws_tls=keys)

    result = kg.check()

    assert result.returncode == 64, describe(result)
    assert names in result.stderr, f"the error should name {names}\n{describe(result)}"


@pytest.mark.parametrize("table", ["vault", "aws"])
def test_check_rejects_a_ca_bundle_that_is_not_pem(start_kg, pki, tmp_path, table):
    """A bad file is a config error too, not only a missing one."""
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("this is not a PEM certificate\n")
    key = "upstream.vault.tls.ca_bundle" if table == "vault" else "upstream.tls.ca_bundle"
    if table == "vault":
        kg = start_kg.make(vault_addr="https://127.0.0.1:8200", vault_tls={"ca_bundle": garbage})
    else:
        kg = start_kg.make(aws_endpoint="https://127.0.0.1:8443", aws_tls={"ca_bundle": garbage})

    result = kg.check()

    assert result.returncode == 64, describe(result)
    assert key in result.stderr, f"the error should name {key}\n{describe(result)}"


@pytest.mark.parametrize("table", ["vault", "aws"])
def test_serve_refuses_a_ca_bundle_that_is_not_pem(start_kg, tmp_path, table):
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("this is not a PEM certificate\n")
    if table == "vault":
        kg = start_kg.make(vault_addr="https://127.0.0.1:8200", vault_tls={"ca_bundle": garbage})
    else:
        kg = start_kg.make(aws_endpoint="https://127.0.0.1:8443", aws_tls={"ca_bundle": garbage})

    result = kg.start_expecting_failure()

    assert result.returncode != 0, result.stdout
    assert "ca_bundle" in result.stdout and str(garbage) in result.stdout, result.stdout


def test_check_accepts_good_upstream_tls_settings(start_kg, pki):
    kg = start_kg.make(
        vault_addr="https://127.0.0.1:8200",
        vault_tls=tls_keys(pki),
        aws_endpoint="https://127.0.0.1:8443",
        aws_tls=tls_keys(pki, insecure_skip_verify=False),
    )

    result = kg.check()

    assert result.returncode == 0, describe(result)
