"""A throwaway public-key infrastructure for the TLS tests, made with `cryptography`: a CA,
a second CA nobody trusts, and certificates for 127.0.0.1, ::1 and localhost (valid,
expired, self-signed, for another name), plus a client certificate for mutual TLS.

The `pki` fixture makes it once per test session; `server_context` and `client_context`
build `ssl.SSLContext`s from it.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of PEM files: `ca`/`other_ca` are CA certificates; each certificate NAME has
    NAME.pem and NAME.key."""

    directory: pathlib.Path

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def other_ca(self) -> str:
        return str(self.directory / "other-ca.pem")

    def cert(self, name: str) -> tuple[str, str]:
        """(certificate file, key file) of certificate `name`."""
        return str(self.directory / f"{name}.pem"), str(self.directory / f"{name}.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(directory: pathlib.Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> None:
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(common_name: str, names: tuple[str, ...], issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, *, client: bool = False,
          not_before: datetime.datetime, not_after: datetime.datetime,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate; self-signed when issuer is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name))
               .issuer_name(issuer.subject if issuer is not None else _name(common_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
    return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256()), key


def make_pki(directory: pathlib.Path) -> Pki:
    """Write the CAs and certificates into `directory`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_before": now - datetime.timedelta(hours=1), "not_after": now + datetime.timedelta(days=7)}
    ca, ca_key = _ca("tether test CA", now)
    other, other_key = _ca("tether untrusted CA", now)
    _write(directory, "ca", ca, ca_key)
    _write(directory, "other-ca", other, other_key)
    leaves = {
        "server": _leaf("tether test server", LOOPBACK_NAMES, ca, ca_key, **valid),
        "wrong-name": _leaf("elsewhere", ("elsewhere.invalid",), ca, ca_key, **valid),
        "expired": _leaf("tether expired server", LOOPBACK_NAMES, ca, ca_key,
                         not_before=now - datetime.timedelta(days=10),
                         not_after=now - datetime.timedelta(days=1)),
        "self-signed": _leaf("tether self-signed server", LOOPBACK_NAMES, None, None, **valid),
        "other-ca-server": _leaf("tether server of another CA", LOOPBACK_NAMES, other, other_key, **valid),
        "client": _leaf("tether test client", (), ca, ca_key, client=True, **valid),
        "other-ca-client": _leaf("tether client of another CA", (), other, other_key, client=True, **valid),
    }
    for name, (cert, key) in leaves.items():
        _write(directory, name, cert, key)
    return Pki(directory)


def issue_server_certificate(pki: Pki, name: str, names: tuple[str, ...]) -> tuple[str, str]:
    """A server certificate `name` for `names` (addresses or host names), issued by the test
    CA; (certificate file, key file)."""
    ca = x509.load_pem_x509_certificate((pki.directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, key = _leaf(f"tether {name}", names, ca, ca_key, not_before=now - datetime.timedelta(hours=1),
                      not_after=now + datetime.timedelta(days=7))
    _write(pki.directory, name, cert, key)
    return pki.cert(name)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test PKI, made once per test session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki, cert: str = "server", *, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context presenting certificate `cert`; with client_ca, it requires a client
    certificate issued by that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*pki.cert(cert))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_context(pki: Pki, ca: str | None = None, cert: str | None = None) -> ssl.SSLContext:
    """A client context trusting `ca` (the test CA by default), presenting certificate
    `cert` if given."""
    context = ssl.create_default_context(cafile=ca or pki.ca)
    if cert is not None:
        context.load_cert_chain(*pki.cert(cert))
    return context
