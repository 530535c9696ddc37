"""What ``MONGODB_URI`` says, and how the txmongo pool is made to do all of it.

txmongo 26 reads few of a connection string's options: it uses TLS only
when it is handed an ``ssl_context_factory``, authenticates only when the URI
has a database path, speaks SCRAM-SHA-1 and X.509 only, and swallows an
authentication failure (the connection is then used unauthenticated).  This
module closes those gaps on txmongo's public hooks, without changing txmongo:

* ``parse`` reads the URI once with pymongo's ``uri_parser`` and returns a
  ``Target``; an option the daemon cannot honour is a ``ConfigError`` naming
  it (the daemon stops at startup with that one line).
* ``resolve`` turns a ``mongodb+srv://`` target into its hosts (SRV) and
  options (TXT) -- pymongo's resolver on dnspython, run in a thread.
* ``tls_creator`` builds the TLS client connection creator handed to
  ``ConnectionPool(ssl_context_factory=...)`` from Twisted's
  ``optionsForClientTLS`` (host name checked by ``service_identity``).
* ``protocol_class`` is the ``MongoProtocol`` subclass the pool's factories
  build: its ``authenticate`` speaks SCRAM-SHA-256/SCRAM-SHA-1 (``scramp``)
  and MONGODB-X509 and closes the connection when authentication fails; its
  ``connectionReady`` sends the driver handshake with ``appName``; its
  ``connectionLost`` names the cause of a failed connection (TLS, host name,
  plaintext to a TLS server) to an observer.

Secrets: the password is kept out of ``repr`` and never enters a message.
"""

from __future__ import annotations

import functools
import platform
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worknet.errors import ConfigError

# Every option pymongo's URI parser validates (``pymongo.common.URI_OPTIONS_VALIDATOR_MAP``, lower
# case) is in exactly one of HONOURED, NOTICES and REFUSED (tests/test_uri.py checks it against the
# installed pymongo).  An option a later pymongo adds is accepted with a notice naming it.
HONOURED = frozenset({
    "tls", "ssl", "tlscafile", "tlscertificatekeyfile", "tlsallowinvalidcertificates",
    "tlsallowinvalidhostnames", "tlsinsecure", "authsource", "authmechanism", "replicaset",
    "w", "journal", "wtimeoutms", "fsync", "readpreference", "appname",
    "srvservicename", "srvmaxhosts", "srvallowedhostssuffix",
    "maxpoolsize", "minpoolsize", "connecttimeoutms", "serverselectiontimeoutms", "sockettimeoutms",
    "timeoutms", "directconnection", "readconcernlevel", "maxidletimems", "heartbeatfrequencyms",
    "uuidrepresentation",
})
# pymongo adds this one itself when tlsInsecure is given (a notice only when the URI names it)
IMPLIED = frozenset({"tlsdisableocspendpointcheck"})
# Accepted; they cannot matter to this daemon: one startup line each, saying why.
NOTICES = {
    "retrywrites": "the driver does not retry writes itself; a write cut off by a failover answers UNAVAILABLE "
                   "and the caller retries it with its idempotency key / client id",
    "retryreads": "the driver does not retry reads itself; a read cut off by a failover answers UNAVAILABLE "
                  "and the caller retries it",
    "enableoverloadretargeting": "the driver does not retry (a call answers UNAVAILABLE for its caller to retry)",
    "maxadaptiveretries": "the driver does not retry (a call answers UNAVAILABLE for its caller to retry)",
    "compressors": "connections are not compressed (txmongo has no wire compression)",
    "zlibcompressionlevel": "connections are not compressed (txmongo has no wire compression)",
    "localthresholdms": "reads go to the primary only, so there is no latency window to choose in",
    "readpreferencetags": "reads go to the primary only; tags select secondaries",
    "maxstalenessseconds": "reads go to the primary only; staleness applies to secondaries",
    "waitqueuetimeoutms": "calls share the pool's connections (pipelined), no call waits for a free one; "
                          "the per-call deadline bounds every wait",
    "waitqueuemultiple": "calls share the pool's connections (pipelined), there is no wait queue",
    "maxconnecting": "the pool opens its connections at startup",
    "connect": "the daemon connects at startup",
    "servermonitoringmode": "the pool checks each server by polling every heartbeatFrequencyMS",
    "authmechanismproperties": "only the GSSAPI, AWS and OIDC mechanisms use them, and those are not supported",
    "tlsdisableocspendpointcheck": "the daemon does not query OCSP responders",
    "tz_aware": "a pymongo client option: the daemon decodes dates itself (UTC)",
    "datetime_conversion": "a pymongo client option: the daemon decodes dates itself (UTC)",
    "unicode_decode_error_handler": "a pymongo client option: the daemon decodes strings itself (strict UTF-8)",
}
# Unsafe to ignore (or impossible to honour): the daemon stops with one line saying why.
REFUSED = {
    "tlscertificatekeyfilepassword": "is not supported: an encrypted client key cannot be used, and its password "
                                     "would sit in the URI; give an unencrypted key file only the daemon's user can read",
    "tlscrlfile": "is not supported: the daemon cannot check certificate revocation lists, and ignoring one would "
                  "trust a revoked certificate",
    "loadbalanced": "is not supported: the daemon does not pin cursors and transactions to one connection "
                    "behind a load balancer",
}
# Options pymongo validates that a connection string cannot carry (keyword arguments of MongoClient only).
NOT_IN_URI = frozenset({"driver", "server_api"})
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "MONGODB-X509")
READ_CONCERNS = ("local", "available", "majority", "linearizable", "snapshot")
INSECURE_ENVIRONMENTS = ("development", "test")
SRV_ONLY = ("srvservicename", "srvmaxhosts", "srvallowedhostssuffix")
DEFAULT_CONNECT_TIMEOUT = 0.5  # txmongo's connection and handshake timeout without connectTimeoutMS (seconds)
DEFAULT_HEARTBEAT = 5.0  # txmongo's pinger interval without heartbeatFrequencyMS (seconds)


@dataclass(frozen=True)
class Target:
    """Everything the connection string asks for, checked."""

    hosts: tuple[tuple[str, int], ...]
    srv: str | None = None  # the SRV name of a mongodb+srv:// URI, not yet resolved
    srv_service_name: str | None = None
    srv_max_hosts: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    auth_source: str | None = None
    mechanism: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_key_file: str | None = None
    allow_invalid_certificates: bool = False
    allow_invalid_hostnames: bool = False
    replica_set: str | None = None
    w: int | str = "majority"
    journal: bool | None = True
    wtimeout_ms: int | None = None
    app_name: str | None = None
    notices: tuple[str, ...] = ()
    # What the connection string says about the pool and its timeouts (seconds; None: not given).
    max_pool_size: int | None = None  # 0: no limit
    min_pool_size: int | None = None
    connect_timeout: float | None = None
    server_selection_timeout: float | None = None
    call_timeout: float | None = None  # timeoutMS, else socketTimeoutMS; 0: no limit
    call_timeout_option: str | None = None  # which of the two gave it
    max_idle: float | None = None
    heartbeat: float | None = None
    direct: bool = False
    read_concern: str | None = None
    uuid_representation: int | None = None
    srv_allowed_hosts_suffix: str | None = None

    @property
    def where(self) -> str:
        """The hosts, for log lines (never the credentials)."""
        if self.srv:
            return f"mongodb+srv://{self.srv}"
        return ",".join(f"{host}:{port}" for host, port in self.hosts)

    @property
    def authenticates(self) -> bool:
        return self.mechanism is not None

    @property
    def auth_database(self) -> str:
        if self.mechanism == "MONGODB-X509":
            return "$external"
        return self.auth_source or self.database or "admin"

    @property
    def authenticates_against(self) -> str | None:
        """The database the user authenticates against, or None without credentials."""
        return self.auth_database if self.authenticates else None

    @property
    def write_concern(self) -> dict[str, Any]:
        """The pool's write concern: ``w: majority``, journaled, unless the URI says otherwise."""
        concern: dict[str, Any] = {"w": self.w}
        if self.journal is not None:
            concern["j"] = self.journal
        if self.wtimeout_ms is not None:
            concern["wtimeout"] = self.wtimeout_ms
        return concern

    def txmongo_uri(self) -> str:
        """The URI handed to txmongo: hosts and replica set only (credentials and TLS are ours)."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        query = {"replicaSet": self.replica_set} if self.replica_set else {}
        return f"mongodb://{hosts}/" + (f"?{urllib.parse.urlencode(query)}" if query else "")


DEFAULT_POOL_SIZE = 10
MAX_POOL_SIZE = 200  # MONGODB_POOL_SIZE's ceiling too


def pool_size(target: Target | None) -> tuple[int, str | None]:
    """The pool size the URI asks for (``maxPoolSize``, raised to ``minPoolSize``), and a notice when it is bounded.

    txmongo's pool is fixed: it opens every connection at startup and
    pipelines calls over them.  So ``maxPoolSize`` is the size (0, "no
    limit": the default size), ``minPoolSize`` a floor, and both are held to
    1..200.
    """
    if target is None:
        return DEFAULT_POOL_SIZE, None
    wanted = target.max_pool_size or DEFAULT_POOL_SIZE
    if target.min_pool_size is not None:
        wanted = max(wanted, target.min_pool_size)
    size = max(1, min(MAX_POOL_SIZE, wanted))
    if size != wanted:
        return size, f"MONGODB_URI asks for a pool of {wanted} connections: the pool has {size} (at most {MAX_POOL_SIZE})"
    return size, None


def call_timeout(target: Target | None, default: float, low: float, high: float) -> tuple[float, str | None]:
    """The per-call deadline the URI asks for (``timeoutMS``, else ``socketTimeoutMS``), held to low..high."""
    if target is None or target.call_timeout is None:
        return default, None
    wanted = target.call_timeout
    if wanted == 0:
        return high, f"MONGODB_URI option {target.call_timeout_option}=0 (no limit): calls get the longest deadline, {high:g} s"
    value = max(low, min(high, wanted))
    if value != wanted:
        return value, (f"MONGODB_URI option {target.call_timeout_option}={wanted * 1000:g}: the per-call deadline is "
                       f"{value:g} s (between {low:g} and {high:g} s)")
    return value, None


_READS = (b"find", b"aggregate", b"count", b"distinct")


def with_read_concern(body: bytes, element: bytes) -> bytes | None:
    """An OP_MSG command body with ``element`` (an encoded ``readConcern``) appended, or None to send it as it is.

    Only reads (find, aggregate, count, distinct) that carry no read concern
    of their own get it; an aggregate that writes ($out, $merge) or opens a
    change stream is left alone.  The caller leaves transactions alone (their
    first statement carries ``snapshot``).  The command name is read from the
    raw bytes, so other commands cost nothing.
    """
    end = body.find(b"\x00", 5)
    if end < 0 or body[5:end] not in _READS:
        return None
    from bson.raw_bson import RawBSONDocument

    command = RawBSONDocument(body)
    if "readConcern" in command:
        return None
    if body[5:end] == b"aggregate":
        stages = [next(iter(stage), "") for stage in command.get("pipeline", [])]
        if {"$out", "$merge", "$changeStream"} & set(stages):
            return None
    size = len(body) - 1 + len(element) + 1
    return size.to_bytes(4, "little", signed=True) + body[4:-1] + element + b"\x00"


def read_concern_element(level: str) -> bytes:
    """``readConcern: {level}`` as the raw BSON element :func:`with_read_concern` appends."""
    import bson

    return bson.encode({"readConcern": {"level": level}})[4:-1]


def direct_hello(reply: dict) -> dict:
    """A ``hello`` reply without the other members it lists: with ``directConnection=true`` none is dialled."""
    return {k: v for k, v in reply.items() if k not in ("hosts", "passives", "arbiters")}


def _flag(options: dict[str, Any], *names: str) -> bool | None:
    for name in names:
        if name in options:
            return bool(options[name])
    return None


def _refuse(name: str, why: str) -> ConfigError:
    return ConfigError(f"MONGODB_URI option {name} {why}")


def _target(parsed: dict[str, Any], environment: str, srv: str | None,
            given: Mapping[str, str] | None = None) -> Target:
    """Check the options of one parsed URI (pymongo's ``parse_uri`` result) and build the Target.

    ``given``: the options written in the URI (lower case -> as written), as opposed to those pymongo implies.
    """
    given = given or {}
    options = {str(k).lower(): v for k, v in parsed["options"].items()}
    spelled = {str(k).lower(): given.get(str(k).lower(), str(k)) for k in parsed["options"]}
    for name, why in REFUSED.items():
        if name in options:
            raise _refuse(spelled[name], why)
    if parsed.get("collection"):
        raise ConfigError("MONGODB_URI names a collection after the database; give a database name only")
    notices = [f"MONGODB_URI option {spelled[name]} is accepted and ignored: {why}"
               for name, why in NOTICES.items() if name in options and (name not in IMPLIED or name in given)]
    notices += [f"MONGODB_URI option {spelled[name]} is not known to this daemon; ignored"
                for name in sorted(set(options) - HONOURED - IMPLIED - set(NOTICES))]

    tls = bool(_flag(options, "tls", "ssl")) or srv is not None and _flag(options, "tls", "ssl") is not False
    insecure = bool(_flag(options, "tlsinsecure"))
    invalid_certs = insecure or bool(_flag(options, "tlsallowinvalidcertificates"))
    invalid_names = insecure or bool(_flag(options, "tlsallowinvalidhostnames"))
    for name, on in (("tlsInsecure", insecure), ("tlsAllowInvalidCertificates", invalid_certs),
                     ("tlsAllowInvalidHostnames", invalid_names)):
        if on and environment not in INSECURE_ENVIRONMENTS:
            raise _refuse(name, "turns off the server's identity check; it is refused outside "
                          "NODE_ENV=development/test (give tlsCAFile instead)")
    tls_options = [spelled[n] for n in ("tlscafile", "tlscertificatekeyfile", "tlsallowinvalidcertificates",
                                        "tlsallowinvalidhostnames", "tlsinsecure") if n in options]
    if tls_options and not tls:
        raise _refuse(tls_options[0], "needs tls=true")
    ca_file = options.get("tlscafile")
    cert_key_file = options.get("tlscertificatekeyfile")
    for name, path in (("tlsCAFile", ca_file), ("tlsCertificateKeyFile", cert_key_file)):
        if path is not None:
            _check_pem(name, str(path), key=name == "tlsCertificateKeyFile")

    mechanism = options.get("authmechanism")
    username, password = parsed.get("username"), parsed.get("password")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise _refuse("authMechanism", f"{mechanism} is not supported (use one of {', '.join(MECHANISMS)})")
    if mechanism is None and username:
        mechanism = "SCRAM-SHA-256"  # MongoDB >= 4.0's default, and SecantusDB --auth's
    if mechanism == "MONGODB-X509":
        if not cert_key_file:
            raise _refuse("authMechanism", "MONGODB-X509 needs tlsCertificateKeyFile (the client certificate)")
        if password:
            raise _refuse("authMechanism", "MONGODB-X509 takes no password")
    elif mechanism is not None and not (username and password):
        raise _refuse("authMechanism", f"{mechanism} needs a user name and a password in the URI")

    read_preference = str(options.get("readpreference", "primary"))
    if read_preference not in ("primary", "primaryPreferred"):
        raise _refuse("readPreference", f"{read_preference} is not supported: the daemon reads from the primary only "
                      "(its money checks must see the latest writes)")
    read_concern = options.get("readconcernlevel")
    if read_concern is not None and read_concern not in READ_CONCERNS:
        raise _refuse("readConcernLevel", f"{read_concern} is not a read concern level (one of {', '.join(READ_CONCERNS)})")

    w = options.get("w", "majority")
    if w == 0:
        raise _refuse("w", "0 (unacknowledged) is not supported: every write must be acknowledged, money included")
    journal = options.get("journal")
    if journal is None:
        # fsync=true asks for the write on disk: with WiredTiger that is the journal (j: true)
        journal = True if "w" not in options or options.get("fsync") else None
    max_pool, min_pool = options.get("maxpoolsize"), options.get("minpoolsize")
    if max_pool and min_pool is not None and min_pool > max_pool:
        raise _refuse("minPoolSize", f"{min_pool} is more than maxPoolSize {max_pool}")
    call_timeout, call_option = None, None
    for name in ("timeoutms", "sockettimeoutms"):  # timeoutMS supersedes socketTimeoutMS, as in pymongo
        if name in options:
            value = options[name]
            call_timeout, call_option = (0.0 if not value else float(value)), spelled[name]
            break
    return Target(
        hosts=tuple((str(h), int(p)) for h, p in parsed["nodelist"]),
        srv=srv,
        srv_service_name=options.get("srvservicename"),
        srv_max_hosts=options.get("srvmaxhosts"),
        srv_allowed_hosts_suffix=options.get("srvallowedhostssuffix"),
        username=username, password=password, database=parsed.get("database"),
        auth_source=options.get("authsource"), mechanism=mechanism,
        tls=tls, ca_file=str(ca_file) if ca_file else None, cert_key_file=str(cert_key_file) if cert_key_file else None,
        allow_invalid_certificates=invalid_certs, allow_invalid_hostnames=invalid_names,
        replica_set=options.get("replicaset"),
        w=w, journal=journal, wtimeout_ms=options.get("wtimeoutms"),
        app_name=options.get("appname"), notices=tuple(notices),
        max_pool_size=max_pool, min_pool_size=min_pool,
        connect_timeout=options.get("connecttimeoutms"),
        server_selection_timeout=options.get("serverselectiontimeoutms"),
        call_timeout=call_timeout, call_timeout_option=call_option,
        max_idle=options.get("maxidletimems"), heartbeat=options.get("heartbeatfrequencyms"),
        direct=bool(options.get("directconnection")), read_concern=read_concern,
        uuid_representation=options.get("uuidrepresentation"),
    )


def _check_pem(name: str, path: str, *, key: bool) -> None:
    """The file exists and holds what the option needs (certificates; a key too for the client file)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _refuse(name, f"{path}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise _refuse(name, f"{path}: no PEM certificate in the file")
    if key and b"PRIVATE KEY-----" not in data:
        raise _refuse(name, f"{path}: no PEM private key in the file (certificate and key go in one file)")
    if key and b"ENCRYPTED" in data:
        raise _refuse(name, f"{path}: the private key is encrypted (tlsCertificateKeyFilePassword is not supported)")


@functools.lru_cache(maxsize=8)
def parse(uri: str, environment: str) -> Target:
    """Parse and check ``MONGODB_URI`` (no network: a ``+srv`` name is resolved later, by ``resolve``)."""
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri

    srv = None
    text = uri
    srv_only: dict[str, Any] = {}
    if uri.startswith("mongodb+srv://"):
        # Check the syntax now without DNS: the same URI with the plain scheme and no SRV-only options.
        rest = uri[len("mongodb+srv://"):]
        head, _, query = rest.partition("?")
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k.lower() not in SRV_ONLY]
        srv_only = {k.lower(): v for k, v in urllib.parse.parse_qsl(query) if k.lower() in SRV_ONLY}
        hostpart = head.partition("/")[0].rpartition("@")[2]
        if "," in hostpart or ":" in hostpart:
            raise ConfigError("MONGODB_URI: a mongodb+srv:// URI names one host, without a port")
        srv = hostpart
        text = "mongodb://" + head + ("?" + urllib.parse.urlencode(kept) if kept else "")
    elif not uri.startswith("mongodb://"):
        raise ConfigError("MONGODB_URI must start with mongodb:// or mongodb+srv://")
    written = {k.lower(): k for k, _ in urllib.parse.parse_qsl(uri.partition("?")[2])}
    given = {k.lower(): v for k, v in urllib.parse.parse_qsl(text.partition("?")[2])}
    for name, why in REFUSED.items():  # before pymongo, which may read the files they name
        if name in written:
            raise _refuse(written[name], why)
    for name in ("tlsCAFile", "tlsCertificateKeyFile"):  # before pymongo, whose message would not name the option
        if name.lower() in given:
            _check_pem(name, given[name.lower()], key=name == "tlsCertificateKeyFile")
    try:
        with warnings.catch_warnings():  # e.g. "compressors=zstd: not available": the notice says more
            warnings.simplefilter("ignore")
            parsed = parse_uri(text)
    except (PyMongoError, ValueError, TypeError, OSError) as e:
        raise ConfigError(f"MONGODB_URI is not a valid connection string: {_without_secret(str(e), uri)}") from None
    if srv is not None:
        parsed["options"].update(srv_only)
        if "srvmaxhosts" in srv_only:
            try:
                parsed["options"]["srvmaxhosts"] = int(srv_only["srvmaxhosts"])
            except ValueError:
                raise _refuse("srvMaxHosts", "must be a whole number") from None
    return _target(parsed, environment, srv, written)


def _without_secret(message: str, uri: str) -> str:
    """pymongo quotes parts of the URI in some messages: never let the password through."""
    try:
        userinfo = uri.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    except IndexError:
        return message
    password = userinfo.partition(":")[2]
    for secret in {password, urllib.parse.unquote_plus(password)} - {""}:
        message = message.replace(secret, "***")
    return message


def resolve(target: Target) -> Target:
    """A ``+srv`` target with its SRV hosts and TXT options (``authSource``, ``replicaSet``).  Blocking: run in a thread."""
    if target.srv is None:
        return target
    from pymongo.uri_parser import parse_uri

    query: dict[str, Any] = {}
    if target.srv_service_name:
        query["srvServiceName"] = target.srv_service_name
    if target.srv_max_hosts:
        query["srvMaxHosts"] = target.srv_max_hosts
    if target.srv_allowed_hosts_suffix:  # pymongo's resolver refuses SRV hosts outside it
        query["srvAllowedHostsSuffix"] = target.srv_allowed_hosts_suffix
    parsed = parse_uri(f"mongodb+srv://{target.srv}/" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
    options = {str(k).lower(): v for k, v in parsed["options"].items()}
    if options.get("loadbalanced"):
        raise ConfigError(f"the TXT record of {target.srv} asks for loadBalanced, which this daemon does not support")
    return replace(
        target,
        hosts=tuple((str(h), int(p)) for h, p in parsed["nodelist"]),
        auth_source=target.auth_source or options.get("authsource"),
        replica_set=target.replica_set or options.get("replicaset"),
    )


# -- TLS ------------------------------------------------------------------------


def tls_creator(target: Target) -> Any:
    """The ``ssl_context_factory`` for txmongo's pool, or None without TLS.

    One ``optionsForClientTLS`` per host name (the name each connection is
    dialling is read from its connector, so replica-set members discovered
    later are checked against their own names).  The trust root is
    ``tlsCAFile`` or the system's store.
    """
    if not target.tls:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from OpenSSL import SSL
    from twisted.internet import ssl
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from zope.interface import implementer

    trust: Any = ssl.platformTrust()
    ca_certs: list[Any] = []
    if target.ca_file:
        ca_certs = [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM))
                    for c in x509.load_pem_x509_certificates(Path(target.ca_file).read_bytes())]
        trust = ssl.trustRootFromCertificates(ca_certs)
    client = ssl.PrivateCertificate.loadPEM(Path(target.cert_key_file).read_text()) if target.cert_key_file else None
    default_host = target.hosts[0][0] if target.hosts else "localhost"

    if target.allow_invalid_certificates or target.allow_invalid_hostnames:
        # development/test only (parse refused it elsewhere): chain checked unless invalid certificates are allowed
        kwargs: dict[str, Any] = {}
        if client is not None:
            kwargs.update(privateKey=client.privateKey.original, certificate=client.original)
        if target.allow_invalid_certificates:
            options = ssl.CertificateOptions(verify=False, **kwargs)
        else:
            options = ssl.CertificateOptions(
                verify=True, requireCertificate=True,
                caCerts=[c.original for c in ca_certs] if ca_certs else None,
                trustRoot=None if ca_certs else trust, **kwargs)

        @implementer(IOpenSSLClientConnectionCreator)
        class Unchecked:
            def clientConnectionForTLS(self, tls_protocol: Any) -> Any:
                return SSL.Connection(options.getContext(), None)

        return Unchecked()

    @implementer(IOpenSSLClientConnectionCreator)
    class PerHost:
        """``optionsForClientTLS`` for the host name the connection is dialling."""

        def __init__(self) -> None:
            self._by_host: dict[str, Any] = {}

        def clientConnectionForTLS(self, tls_protocol: Any) -> Any:
            host = _dialled_host(tls_protocol) or default_host
            creator = self._by_host.get(host)
            if creator is None:
                creator = self._by_host[host] = ssl.optionsForClientTLS(host, trustRoot=trust,
                                                                        clientCertificate=client)
            return creator.clientConnectionForTLS(tls_protocol)

    return PerHost()


def _dialled_host(tls_protocol: Any) -> str | None:
    """The host name the TLS connection was dialled with (txmongo moves its connector between hosts)."""
    wrapped = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    connector = getattr(wrapped, "connector", None)
    host = getattr(connector, "host", None)
    return host if isinstance(host, str) else None


# -- the protocol -----------------------------------------------------------------


class Observer:
    """Where the connections report a failure the operator must see.

    ``on_problem(cause, certain)``: a certain cause (refused credentials, a
    TLS failure, a replica-set mismatch) is always reported; an uncertain one
    (a connection closed before any answer) only counts while it persists,
    see ``MongoStore._connection_problem``.
    """

    def __init__(self, on_problem: Callable[[str, bool], None], on_answer: Callable[[], None]) -> None:
        self.on_problem = on_problem
        self.on_answer = on_answer  # a connection got its first answer


_MISMATCH = {"DNSMismatch": "DNS name mismatch", "IPAddressMismatch": "IP address mismatch",
             "SRVMismatch": "SRV name mismatch", "URIMismatch": "URI mismatch"}


def describe_failure(reason: Any, *, tls: bool, answered: bool, host: str) -> tuple[str, bool] | None:
    """The cause of a lost connection and whether it is certain (see ``Observer``); None: an ordinary loss.

    A connection closed before any answer is not certain: a plaintext URI to
    a TLS server does it, and so does a server shutting down (measured with
    SecantusDB); a TLS handshake cut short without a TLS error too (a server
    that wants a client certificate, or an overloaded one).
    """
    from OpenSSL import SSL
    from service_identity import VerificationError
    from twisted.internet import error

    if reason.check(VerificationError):
        kinds = sorted({_MISMATCH.get(type(e).__name__, type(e).__name__) for e in reason.value.errors})
        return (f"TLS: the certificate of {host} is not issued for the host name {host.rsplit(':', 1)[0]} "
                f"({', '.join(kinds)}; connect with a name the certificate lists)"), True
    if reason.check(SSL.Error):
        details = "; ".join(str(part[2]) for part in (reason.value.args[0] if reason.value.args else [])
                            if isinstance(part, tuple) and len(part) == 3) or str(reason.value)
        if "certificate verify failed" in details:
            details += " (the server's certificate is not signed by a trusted CA: check tlsCAFile)"
        return f"TLS handshake with {host} failed: {details}", True
    if not answered and reason.check(error.ConnectionDone, error.ConnectionLost):
        if tls:
            return (f"{host} closed the connection during the TLS handshake "
                    "(does it require a client certificate?)"), False
        return (f"{host} closed the connection before answering (a TLS-only server? the URI does not ask for "
                "tls=true)"), False
    return None


def protocol_class(target: Target, observer: Observer, clock: Any = None) -> type:
    """The ``MongoProtocol`` subclass the pool's factories build (``factory.protocol``).

    ``clock`` (the store's reactor) stamps each connection's last use, for ``maxIdleTimeMS``.
    """
    from pymongo.errors import AutoReconnect, ConfigurationError, ConnectionFailure
    from twisted.internet import defer, threads
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectionDone, ConnectionLost
    from txmongo.protocol import MongoAuthenticationError, MongoProtocol

    if clock is None:
        from twisted.internet import reactor as clock

    concern = read_concern_element(target.read_concern) if target.read_concern else None

    class Protocol(MongoProtocol):
        answered = False
        lost = False
        in_flight = 0  # requests sent and not yet answered (maxIdleTimeMS closes only idle connections)
        last_used = 0.0  # reactor time of the last request or answer

        def _track(self, d: Any) -> Any:
            self.in_flight += 1
            self.last_used = clock.seconds()

            def done(result: Any) -> Any:
                self.in_flight -= 1
                self.last_used = clock.seconds()
                return result

            return d.addBoth(done)

        def send_msg(self, msg: Any, codec_options: Any, session: Any, **kwargs: Any) -> Any:
            if concern is not None and not (session is not None and session.in_transaction()):
                body = with_read_concern(msg.body, concern)  # readConcernLevel on every read outside transactions
                if body is not None:
                    msg = replace(msg, body=body)
            return self._track(super().send_msg(msg, codec_options, session, **kwargs))

        def send_op_query_command(self, database: Any, query: Any) -> Any:
            d = self._track(super().send_op_query_command(database, query))
            if target.direct and dict(query) == {"ismaster": 1}:  # txmongo's discovery reads the members here
                d.addCallback(direct_hello)
            return d

        @property
        def host(self) -> str:
            connector = getattr(self.factory, "connector", None)
            if connector is not None and isinstance(getattr(connector, "host", None), str):
                return f"{connector.host}:{connector.port}"
            peer = self.transport.getPeer() if self.transport else None
            return f"{peer.host}:{peer.port}" if peer is not None else target.where

        def dataReceived(self, data: bytes) -> None:
            if not self.answered:
                self.answered = True
                observer.on_answer()
            super().dataReceived(data)

        def connectionReady(self) -> Any:
            self.last_used = clock.seconds()
            d = super().connectionReady()
            if target.app_name:
                d.addCallback(lambda _: self._greet())
            return d

        def _greet(self) -> Any:
            """The driver handshake (first command of the connection) with ``appName``."""
            import txmongo

            hello = {"isMaster": 1, "client": {
                "application": {"name": target.app_name},
                "driver": {"name": "txmongo|worknet-rpc", "version": getattr(txmongo, "__version__", "26")},
                "os": {"type": platform.system() or "unknown"},
            }}
            d = self.send_op_query_command("admin", hello)
            d.addErrback(lambda _: None)  # txmongo's own hello comes next and reports the failure
            d.addCallback(lambda _: None)
            return d

        def connectionLost(self, reason: Any = None) -> None:
            self.lost = True
            if reason is not None:
                found = describe_failure(reason, tls=target.tls, answered=self.answered, host=self.host)
                if found:
                    observer.on_problem(*found)
            super().connectionLost(reason)

        def fail(self, reason: Any) -> None:
            """txmongo's connection setup failed: close it; name a cause the operator must fix.

            (txmongo's own ``fail`` logs every reconnect attempt's error, forever.)
            """
            if isinstance(reason, ConfigurationError):  # replicaSet mismatch, server too old
                text = str(reason)
                if "replicaSet" in text:
                    text = f"the server is not a member of replica set {target.replica_set!r} (replicaSet in the URI)"
                observer.on_problem(f"{self.host}: {text.removeprefix('TxMongo: ')}", True)
            elif target.direct and isinstance(reason, AutoReconnect) and "is not master" in str(reason):
                observer.on_problem(f"{self.host} is not the primary, and directConnection=true connects to that "
                                    "host only (the daemon writes: it needs the primary)", True)
            if self.transport is not None and not self.lost:
                self.transport.loseConnection()

        def authenticate(self, database_name: str, username: str, password: str, mechanism: str) -> Any:
            d = defer.ensureDeferred(self._authenticate(str(database_name), username, password, mechanism))

            def failed(f: Any) -> Any:
                if f.check(ConnectionFailure, ConnectionDone, ConnectionLost, CancelledError):
                    return f  # the connection went away mid-way: not a verdict on the credentials
                reason = f.getErrorMessage() if f.check(MongoAuthenticationError) else f"{type(f.value).__name__}: {f.value}"
                observer.on_problem(
                    f"authentication to {self.host} failed ({mechanism}, user {username!r}, "
                    f"authSource {database_name}): {reason}", True)
                if self.transport is not None:
                    self.transport.abortConnection()  # never serve calls on an unauthenticated connection
                return f

            d.addErrback(failed)
            return d

        async def _authenticate(self, database: str, username: str, password: str, mechanism: str) -> None:
            if mechanism == "MONGODB-X509":
                command: dict[str, Any] = {"authenticate": 1, "mechanism": "MONGODB-X509"}
                if username:
                    command["user"] = username
                answer = await self.send_op_query_command("$external", command)
                if not answer.get("ok"):
                    raise MongoAuthenticationError(answer.get("errmsg", "authentication failed"))
                return
            await self._scram(database, username, password, mechanism)

        async def _scram(self, database: str, username: str, password: str, mechanism: str) -> None:
            import scramp
            from bson import Binary

            secret = password
            if mechanism == "SCRAM-SHA-1":  # MongoDB's SHA-1 variant hashes the password first
                import hashlib

                secret = hashlib.md5(f"{username}:mongo:{password}".encode(), usedforsecurity=False).hexdigest()
            client = scramp.ScramClient([mechanism], username, secret)
            first = await self.send_op_query_command(database, {
                "saslStart": 1, "mechanism": mechanism, "payload": Binary(client.get_client_first().encode()),
                "autoAuthorize": 1, "options": {"skipEmptyExchange": True},
            })
            _check(first)
            client.set_server_first(bytes(first["payload"]).decode())
            # PBKDF2 (15,000 rounds of SHA-256) is CPU work: off the reactor thread
            final = await threads.deferToThread(client.get_client_final)
            answer = await self.send_op_query_command(database, {
                "saslContinue": 1, "conversationId": first["conversationId"], "payload": Binary(final.encode()),
            })
            _check(answer)
            try:
                client.set_server_final(bytes(answer["payload"]).decode())
            except scramp.ScramException as e:
                raise MongoAuthenticationError(f"the server's SCRAM signature is wrong ({e})") from None
            while not answer.get("done"):
                answer = await self.send_op_query_command(database, {
                    "saslContinue": 1, "conversationId": first["conversationId"], "payload": Binary(b""),
                })
                _check(answer)

    return Protocol


def _check(answer: dict) -> None:
    from txmongo.protocol import MongoAuthenticationError

    if not answer.get("ok"):
        raise MongoAuthenticationError(str(answer.get("errmsg") or "authentication failed"))
