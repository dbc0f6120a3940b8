"""Certificates and keys of the dev cluster: one CA, the API server's serving certificate, a client
certificate per component (RBAC identity = CN, groups = O), and the service-account signing key.

ECDSA P-256 everywhere: small, fast to generate, accepted by every component.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)

# Names the API server's certificate must cover: loopback for us, the in-cluster names for pods.
_SERVER_DNS = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local"]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    ca: KeyPair
    apiserver: KeyPair
    service_account_key: Path  # private: signs tokens (apiserver, controller-manager)
    service_account_pub: Path  # public: verifies tokens (apiserver)
    clients: dict[str, KeyPair]  # component name -> client certificate


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(now + _VALIDITY))


def _issue(directory: Path, stem: str, subject: x509.Name, ca_key, ca_cert: x509.Certificate,
           usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None = None) -> KeyPair:
    key = _new_key()
    builder = (_builder(subject, ca_cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_cert(builder.sign(ca_key, hashes.SHA256()), pair.cert)
    _write_key(key, pair.key)
    return pair


def generate(directory: Path, clients: dict[str, tuple[str, tuple[str, ...]]],
             service_ip: str, extra_ips: tuple[str, ...] = ()) -> ClusterPki:
    """Write a fresh PKI under `directory`.

    clients: component name -> (common name, organizations), e.g.
    {"admin": ("specd-admin", ("system:masters",))}.
    service_ip: the first address of the service range (the in-cluster `kubernetes` Service).
    extra_ips: more addresses the API server is reached at (the real node's bridge address).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = _name("specd-dev-cluster-ca")
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False),
                              critical=True)
               .sign(ca_key, hashes.SHA256()))
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    _write_cert(ca_cert, ca.cert)
    _write_key(ca_key, ca.key)

    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in _SERVER_DNS]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip, *extra_ips)])
    apiserver = _issue(directory, "apiserver", _name("kube-apiserver"), ca_key, ca_cert,
                       ExtendedKeyUsageOID.SERVER_AUTH, san)

    client_pairs = {
        component: _issue(directory, f"client-{component}", _name(cn, orgs), ca_key, ca_cert,
                          ExtendedKeyUsageOID.CLIENT_AUTH)
        for component, (cn, orgs) in clients.items()
    }

    sa_key = _new_key()
    sa_private, sa_public = directory / "sa.key", directory / "sa.pub"
    _write_key(sa_key, sa_private)
    sa_public.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return ClusterPki(ca=ca, apiserver=apiserver, service_account_key=sa_private,
                      service_account_pub=sa_public, clients=client_pairs)
