"""A throw-away PKI for the TLS tests: a CA, a server certificate, a client certificate.

Made with ``cryptography`` in a temporary directory; nothing is ever reused
between test runs.  ``Pki.make(directory)`` writes:

* ``ca.pem`` -- the trusted CA; ``other-ca.pem`` -- a CA nobody signed with;
* ``server.pem`` / ``server.key`` -- for 127.0.0.1 only (IP SAN), so that
  ``localhost`` is a wrong host name;
* ``client.pem`` -- a client certificate and its key in one file (what
  ``tlsCertificateKeyFile`` expects), subject ``CN=worknet-daemon,O=WorkNet``;
  ``stranger.pem`` -- the same from ``other-ca.pem``.
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

CLIENT_SUBJECT = "CN=worknet-daemon,O=WorkNet"


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:  # certificate order is least specific first; the DN string reads CN first
        parts.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(parts)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool,
                 extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    return _certificate(_name(common_name), key, _name(common_name), key, ca=True,
                        extensions=[(usage, True)]), key


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client(self) -> Path:
        return self.directory / "client.pem"

    @property
    def stranger(self) -> Path:
        """A client certificate signed by ``other_ca``: the server refuses it."""
        return self.directory / "stranger.pem"

    @classmethod
    def make(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory)
        ca, ca_key = _ca("WorkNet test CA")
        other, other_key = _ca("Somebody else's CA")
        pem = serialization.Encoding.PEM
        pki.ca.write_bytes(ca.public_bytes(pem))
        pki.other_ca.write_bytes(other.public_bytes(pem))

        server_key = _key()
        server = _certificate(
            _name("127.0.0.1"), server_key, ca.subject, ca_key, ca=False,
            extensions=[(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
        )
        pki.server_cert.write_bytes(server.public_bytes(pem))
        pki.server_key.write_bytes(_pem_key(server_key))
        pki.server_key.chmod(0o600)

        client_key = _key()
        client = _certificate(
            _name("worknet-daemon", "WorkNet"), client_key, ca.subject, ca_key, ca=False,
            extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
        )
        pki.client.write_bytes(client.public_bytes(pem) + _pem_key(client_key))
        pki.client.chmod(0o600)

        stranger_key = _key()
        stranger = _certificate(
            _name("stranger", "Elsewhere"), stranger_key, other.subject, other_key, ca=False,
            extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
        )
        pki.stranger.write_bytes(stranger.public_bytes(pem) + _pem_key(stranger_key))
        pki.stranger.chmod(0o600)
        return pki


class SecureDatabase:
    """SecantusDB with ``--tls-cert-file/--tls-key-file/--tls-ca-file --auth`` and three users.

    Users are created on a first, plaintext start without ``--auth`` (as
    ``secantusd-py --help`` says to), then the server restarts on the same
    storage with TLS and authentication:

    * ``modern`` -- SCRAM-SHA-256 credentials only, in ``admin``;
    * ``legacy`` -- SCRAM-SHA-1 credentials only, in ``admin``;
    * ``CN=worknet-daemon,O=WorkNet`` -- MONGODB-X509, in ``$external``.

    Client certificates are verified when offered (``--tls-ca-file``), not required.
    """

    def __init__(self, directory: Path) -> None:
        import secrets

        from tests.conftest import Database

        self.pki = Pki.make(directory / "pki")
        self.password = secrets.token_urlsafe(18)
        pki = self.pki

        class _Tls(Database):
            @property
            def probe_uri(self) -> str:
                return f"mongodb://127.0.0.1:{self.port}/?tls=true&tlsCAFile={pki.ca}"

        self.server = _Tls(directory / "data", "--auth", "--tls-cert-file", str(pki.server_cert),
                           "--tls-key-file", str(pki.server_key), "--tls-ca-file", str(pki.ca))
        self.port = self.server.port

    def start(self) -> None:
        import pymongo

        from tests.conftest import Database

        plain = Database(self.server.storage)
        plain.port = self.port
        plain.start()
        try:
            client = pymongo.MongoClient(plain.uri, directConnection=True)
            roles = [{"role": "root", "db": "admin"}]
            client.admin.command("createUser", "modern", pwd=self.password, roles=roles, mechanisms=["SCRAM-SHA-256"])
            client.admin.command("createUser", "legacy", pwd=self.password, roles=roles, mechanisms=["SCRAM-SHA-1"])
            client["$external"].command("createUser", CLIENT_SUBJECT, roles=roles, mechanisms=["MONGODB-X509"])
            client.close()
        finally:
            plain.stop()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def uri(self, user: str | None = "modern", *, password: str | None = None, host: str = "127.0.0.1",
            path: str = "", **options: str) -> str:
        """A connection string to this server; ``options`` default to TLS with the test CA and authSource=admin."""
        import urllib.parse

        query = {"tls": "true", "tlsCAFile": str(self.pki.ca), "authSource": "admin", **options}
        query = {k: v for k, v in query.items() if v is not None}
        userinfo = f"{user}:{urllib.parse.quote_plus(password or self.password)}@" if user else ""
        return f"mongodb://{userinfo}{host}:{self.port}/{path}?{urllib.parse.urlencode(query)}"


def main() -> None:
    """``python -m tests.tls_support DIR``: run a TLS + auth SecantusDB and print its URI (for WORKNET_TEST_MONGODB_URI)."""
    import signal
    import sys

    server = SecureDatabase(Path(sys.argv[1]))
    server.start()
    print(server.uri(), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
