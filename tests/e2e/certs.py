"""Test PKI for keygate's TLS tests, made with the `cryptography` package.

make_test_pki(directory) writes PEM files for:

- the workload CA, and a server certificate it signs for 127.0.0.1 (IP SAN)
  and localhost; a second server certificate (same names, new key) for the
  reload tests;
- workload client certificates from that CA, one per way keygate names a
  certificate: a SPIFFE ID (URI SAN), a DNS SAN only, a subject CN only, two
  SPIFFE IDs (ambiguous), an expired one, ...;
- a client certificate from a different CA (the "wrong CA");
- an approvers CA with one approver client certificate, for the admin listener.

Keys are ECDSA P-256: quick to make, and what rustls and OpenSSL both like.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names the test config maps to identities (IDENTITY_CERTIFICATES below).
TRUST_DOMAIN = "spiffe://keygate.test"
DEMO_SPIFFE = f"{TRUST_DOMAIN}/ns/demo/sa/app"  # demo-app, exact
DEMO_CN = "demo-app-cn-client"  # demo-app, exact (subject CN)
OTHER_DNS = "other-app.keygate.test"  # other-app, exact (DNS SAN)
CI_SPIFFE = f"{TRUST_DOMAIN}/ns/ci/runner/42"  # other-app, via the glob ns/ci/*
DEMO_IN_CI_SPIFFE = f"{TRUST_DOMAIN}/ns/ci/sa/demo-release"  # demo-app exact, also matches other-app's glob
SHARED_SPIFFE = f"{TRUST_DOMAIN}/ns/ci/sa/shared"  # matches globs of demo-app AND other-app: refused
UNMAPPED_SPIFFE = f"{TRUST_DOMAIN}/ns/nobody/sa/stranger"  # no identity lists it
APPROVER_CN = "alice.approvers.keygate.test"

# identities[].certificates for harness.render_config(certificates=...)
IDENTITY_CERTIFICATES = {
    "demo-app": [DEMO_SPIFFE, DEMO_CN, DEMO_IN_CI_SPIFFE, f"{TRUST_DOMAIN}/ns/*/sa/shared"],
    "other-app": [OTHER_DNS, f"{TRUST_DOMAIN}/ns/ci/*"],
}


@dataclass(frozen=True)
class KeyPair:
    cert: Path  # PEM certificate (for a server: the chain, leaf first)
    key: Path  # PEM private key (PKCS#8)

    def pair(self) -> tuple[str, str]:
        """(cert, key) as strings: botocore's client_cert, requests' cert=."""
        return str(self.cert), str(self.key)

    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER, to compare with what a server presents."""
        return der_fingerprint(load_cert(self.cert).public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path  # workload CA certificate: clients trust it, keygate verifies client certs with it
    server: KeyPair  # 127.0.0.1 + localhost, signed by the workload CA
    server2: KeyPair  # the same names with a new key: the "renewed" certificate
    spiffe: KeyPair  # URI SAN DEMO_SPIFFE (and a DNS SAN nobody maps, which must not win)
    dns: KeyPair  # DNS SAN OTHER_DNS (and a CN nobody maps)
    cn: KeyPair  # subject CN DEMO_CN, no SAN
    ci: KeyPair  # URI SAN CI_SPIFFE
    demo_in_ci: KeyPair  # URI SAN DEMO_IN_CI_SPIFFE
    shared: KeyPair  # URI SAN SHARED_SPIFFE
    unmapped: KeyPair  # URI SAN UNMAPPED_SPIFFE
    two_spiffe: KeyPair  # two SPIFFE IDs: ambiguous, refused
    expired: KeyPair  # DEMO_SPIFFE, from the right CA, but expired yesterday
    wrong_ca: Path  # another CA's certificate
    wrong_ca_client: KeyPair  # DEMO_SPIFFE, signed by the wrong CA
    wrong_ca_server: KeyPair  # 127.0.0.1 + localhost, signed by the wrong CA
    approvers_ca: Path  # CA for the admin listener's client certificates
    approver: KeyPair  # CN APPROVER_CN, from the approvers CA


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


class _Ca:
    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        directory: Path,
        stem: str,
        *,
        cn: str | None = None,
        uris: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
        expired: bool = False,
    ) -> KeyPair:
        """A leaf certificate and key, written as <stem>.pem / <stem>.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        if expired:
            not_before, not_after = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            # an empty subject makes the SAN extension critical (RFC 5280)
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not cn)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pair.key.chmod(0o600)
        return pair


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Digital signature for every certificate; certificate and CRL signing
    only for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


SERVER_NAMES = {"cn": "localhost", "dns": ("localhost",), "ips": ("127.0.0.1",), "server": True}


def make_test_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Ca("keygate test workload CA")
    wrong = _Ca("keygate test WRONG CA")
    approvers = _Ca("keygate test approvers CA")
    return Pki(
        directory=directory,
        ca=ca.write(directory / "ca.pem"),
        server=ca.issue(directory, "server", **SERVER_NAMES),
        server2=ca.issue(directory, "server2", **SERVER_NAMES),
        spiffe=ca.issue(directory, "client-spiffe", uris=(DEMO_SPIFFE,), dns=("decoy.keygate.test",)),
        dns=ca.issue(directory, "client-dns", cn="decoy-cn", dns=(OTHER_DNS,)),
        cn=ca.issue(directory, "client-cn", cn=DEMO_CN),
        ci=ca.issue(directory, "client-ci", uris=(CI_SPIFFE,)),
        demo_in_ci=ca.issue(directory, "client-demo-in-ci", uris=(DEMO_IN_CI_SPIFFE,)),
        shared=ca.issue(directory, "client-shared", uris=(SHARED_SPIFFE,)),
        unmapped=ca.issue(directory, "client-unmapped", uris=(UNMAPPED_SPIFFE,)),
        two_spiffe=ca.issue(directory, "client-two-spiffe", uris=(DEMO_SPIFFE, CI_SPIFFE)),
        expired=ca.issue(directory, "client-expired", uris=(DEMO_SPIFFE,), expired=True),
        wrong_ca=wrong.write(directory / "wrong-ca.pem"),
        wrong_ca_client=wrong.issue(directory, "client-wrong-ca", uris=(DEMO_SPIFFE,)),
        wrong_ca_server=wrong.issue(directory, "server-wrong-ca", **SERVER_NAMES),
        approvers_ca=approvers.write(directory / "approvers-ca.pem"),
        approver=approvers.issue(directory, "approver-alice", cn=APPROVER_CN, dns=(APPROVER_CN,)),
    )
