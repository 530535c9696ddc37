"""A production-shaped MongoDB: TLS, authentication, write concern, and clear failures.

One SecantusDB per module runs with ``--tls-cert-file/--tls-key-file/--tls-ca-file
--auth`` and a throw-away CA (tests/tls_support.py).  Real daemons connect to
it with the connection strings users write; the failures are checked where an
operator looks: the daemon's log line, ``/health``, and a call's answer.
"""

from __future__ import annotations

import json
import time

import pymongo
import pytest

from tests.conftest import wait_for
from tests.support import http_get, user_doc
from tests.tls_support import CLIENT_SUBJECT, SecureDatabase
from worknet.config import ConfigError
from worknet.store import connect


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    server = SecureDatabase(tmp_path_factory.mktemp("secure-db"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(secure):
    client = pymongo.MongoClient(secure.uri(), serverSelectionTimeoutMS=5000, directConnection=True)
    yield client
    client.close()


def health(daemon) -> tuple[int, dict]:
    status, body = http_get(daemon.port, "/health")
    return status, json.loads(body)


def works(daemon, admin) -> None:
    """A write through the daemon lands in the secure server; the password never reached the log."""
    rpc = daemon.proxy()
    made = rpc.categoriesService.create("Secure", "secure", "over TLS")
    assert made["success"], made
    assert admin[daemon.db_name].categories.count_documents({"slug": "secure"}) == 1
    # (while search compares the database with its index on a first start, /health says so in a warning)
    wait_for(lambda: health(daemon) == (200, {"status": "ok", "mongodb": "connected"}), 30, "a healthy /health")
    assert "database ready" in daemon.log()


# -- connecting ---------------------------------------------------------------------


def test_scram_sha_256_with_auth_source_admin_and_no_database_path(secure, admin, make_daemon):
    # `modern` has SCRAM-SHA-256 credentials only: SHA-1 could not log it in
    daemon = make_daemon(mongodb_uri=secure.uri("modern", appName="worknet-test", wtimeoutMS="5000"))
    works(daemon, admin)
    assert secure.password not in daemon.log()
    assert "writes {'w': 'majority', 'j': True, 'wtimeout': 5000}" in daemon.log()


def test_scram_sha_1_with_a_database_path(secure, admin, make_daemon):
    # `legacy` has SCRAM-SHA-1 credentials only; the path names a database, authSource says where the user is
    daemon = make_daemon(mongodb_uri=secure.uri("legacy", path="elsewhere", authMechanism="SCRAM-SHA-1"))
    works(daemon, admin)


def test_client_certificate_with_mongodb_x509(secure, admin, make_daemon):
    uri = secure.uri(None, authSource=None, authMechanism="MONGODB-X509", tlsCertificateKeyFile=str(secure.pki.client))
    daemon = make_daemon(mongodb_uri=uri)
    works(daemon, admin)
    users = admin["$external"].command("usersInfo", CLIENT_SUBJECT)["users"]
    assert [u["user"] for u in users] == [CLIENT_SUBJECT]


def test_a_client_certificate_is_presented_under_scram(secure, admin, make_daemon):
    # the server verifies an offered certificate against its CA: one from elsewhere fails the handshake
    # ("client certificate from an unknown CA" below), so a working connection means ours was presented and accepted
    uri = secure.uri("modern", tlsCertificateKeyFile=str(secure.pki.client))
    works(make_daemon(mongodb_uri=uri), admin)


# -- failures: one line, /health degraded with the cause, calls UNAVAILABLE ----------------


FAILURES = {
    "wrong password": (dict(password="not-the-password"),
                       "authentication to 127.0.0.1:{port} failed (SCRAM-SHA-256, user 'modern', authSource admin)"),
    "untrusted CA": (dict(tlsCAFile="{other_ca}"),
                     "TLS handshake with 127.0.0.1:{port} failed: certificate verify failed"),
    "wrong host name": (dict(host="localhost"),
                        "TLS: the certificate of localhost:{port} is not issued for the host name localhost"),
    "plaintext to the TLS server": (dict(tls=None, tlsCAFile=None),
                                    "127.0.0.1:{port} closed the connection before answering (a TLS-only server?"),
    "client certificate from an unknown CA": (dict(tlsCertificateKeyFile="{stranger}"),
                                              "TLS handshake with 127.0.0.1:{port} failed: "),
    "another replica set": (dict(replicaSet="rs0"),
                            "127.0.0.1:{port}: the server is not a member of replica set 'rs0'"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_refused_connection_is_one_clear_line_a_degraded_health_and_unavailable_calls(secure, make_daemon, case):
    options, expected = FAILURES[case]
    options = {k: (v.format(other_ca=secure.pki.other_ca, stranger=secure.pki.stranger) if isinstance(v, str) else v)
               for k, v in options.items()}
    expected = expected.format(port=secure.port)
    password = options.pop("password", None)
    host = options.pop("host", "127.0.0.1")
    daemon = make_daemon(mongodb_uri=secure.uri("modern", password=password, host=host, **options), start=False)
    daemon.expected_errors = True
    daemon.start(wait=False)

    def degraded():
        try:
            status, body = health(daemon)
        except OSError:
            return None
        return body if status == 503 and expected in body.get("cause", "") else None

    body = wait_for(degraded, 20, f"/health to say why ({case})")
    assert body["status"] == "degraded" and body["mongodb"] == "disconnected"
    assert expected in body["cause"], body
    # a connection closed before any answer counts once it persists (UNCERTAIN_SECONDS): then it is logged
    wait_for(lambda: f"cannot use the database: {expected}" in daemon.log(), 15, "the log line")
    started = time.monotonic()
    answer = daemon.proxy().categoriesService.get_all()
    assert answer["success"] is False and answer["code"] == "UNAVAILABLE"
    assert time.monotonic() - started < 1.0, "refused calls answer at once, not at the deadline"

    time.sleep(2.5)  # txmongo keeps reconnecting meanwhile: the cause must not be logged again, nor drowned
    log = daemon.log()
    lines = [line.split("] ", 1)[1] for line in log.splitlines() if "cannot use the database" in line]
    assert len([line for line in lines if expected in line]) == 1, lines
    assert len(lines) == len(set(lines)), "a cause is logged once"
    assert "TxMongo lost connection" not in log
    assert "waiting for the database" not in log
    assert secure.password not in log and "not-the-password" not in log
    assert health(daemon)[1]["cause"] == body["cause"]


# -- configuration errors stop the daemon at startup ------------------------------------------


@pytest.mark.parametrize(("uri", "named"), [
    ("notauri", "MONGODB_URI must start with mongodb://"),
    ("mongodb://worknet:sekrit-pw@127.0.0.1:notaport/", "MONGODB_URI is not a valid connection string"),
    ("mongodb://127.0.0.1/?loadBalanced=true", "loadBalanced is not supported"),
    ("mongodb://127.0.0.1/?tls=true&tlsInsecure=true", "tlsInsecure turns off the server's identity check"),
    ("mongodb://127.0.0.1/?readPreference=secondary", "readPreference secondary is not supported"),
    ("mongodb://127.0.0.1/?tls=true&tlsCAFile=/nonexistent/ca.pem", "tlsCAFile /nonexistent/ca.pem"),
])
def test_a_bad_uri_stops_the_daemon_with_one_line(make_daemon, uri, named):
    daemon = make_daemon(mongodb_uri=uri, start=False, NODE_ENV="production")
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(timeout=60) == 2
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("worknet-rpc: configuration error: "), lines
    assert named in lines[0]
    assert "sekrit-pw" not in lines[0]


# -- what the URI says, honoured (parsing: no network) -------------------------------------


def test_every_option_is_read(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    client = tmp_path / "client.pem"
    client.write_text(ca.read_text() + "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")
    target = connect.parse(
        f"mongodb://u:p%40ss@db1.example.internal:27017,db2.example.internal:27018/worknet?ssl=true"
        f"&tlsCAFile={ca}&tlsCertificateKeyFile={client}&authSource=admin&authMechanism=SCRAM-SHA-1"
        "&replicaSet=rs0&w=2&journal=false&wtimeoutMS=700&readPreference=primaryPreferred&appName=wn"
        "&retryWrites=true", "production")
    assert target.hosts == (("db1.example.internal", 27017), ("db2.example.internal", 27018))
    assert (target.username, target.password, target.database) == ("u", "p@ss", "worknet")
    assert target.tls and target.ca_file == str(ca) and target.cert_key_file == str(client)
    assert (target.auth_database, target.mechanism, target.replica_set) == ("admin", "SCRAM-SHA-1", "rs0")
    assert target.write_concern == {"w": 2, "j": False, "wtimeout": 700}
    assert target.app_name == "wn" and target.notices  # retryWrites: said at startup, not ignored
    assert "p@ss" not in repr(target)
    assert target.txmongo_uri() == "mongodb://db1.example.internal:27017,db2.example.internal:27018/?replicaSet=rs0"

    default = connect.parse("mongodb://u:p@h/", "production")
    assert default.mechanism == "SCRAM-SHA-256" and default.auth_database == "admin"
    assert default.write_concern == {"w": "majority", "j": True}
    assert not default.tls
    assert connect.parse("mongodb://h/?w=1", "production").write_concern == {"w": 1}
    assert connect.parse("mongodb://h/db", "production").mechanism is None  # no user: no authentication

    srv = connect.parse("mongodb+srv://u:p@cluster0.example.net/worknet?retryWrites=true&w=majority", "production")
    assert srv.srv == "cluster0.example.net" and srv.tls  # +srv turns TLS on
    assert connect.parse("mongodb+srv://cluster0.example.net/?tls=false", "production").tls is False

    insecure = connect.parse("mongodb://h/?tls=true&tlsInsecure=true", "test")
    assert insecure.allow_invalid_certificates and insecure.allow_invalid_hostnames
    for bad, named in [
        ("mongodb://h/?tlsAllowInvalidCertificates=true&tls=true", "tlsAllowInvalidCertificates"),
        ("mongodb://h/?tlsAllowInvalidHostnames=true&tls=true", "tlsAllowInvalidHostnames"),
        (f"mongodb://h/?tlsCAFile={ca}", "needs tls=true"),
        ("mongodb://u:p@h/?authMechanism=PLAIN", "PLAIN is not supported"),
        ("mongodb://h/?tls=true&authMechanism=MONGODB-X509", "needs tlsCertificateKeyFile"),
        ("mongodb://h/?w=0", "unacknowledged"),
        ("mongodb://h/?tls=true&tlsCRLFile=/etc/worknet/crl.pem", "tlsCRLFile is not supported"),
        ("mongodb://h/worknet.users", "collection"),
        ("mongodb+srv://a.example.net:27017/", "without a port"),
        (f"mongodb://h/?tls=true&tlsCertificateKeyFile={ca}", "no PEM private key"),
    ]:
        with pytest.raises(ConfigError) as raised:
            connect.parse(bad, "production")
        assert named in str(raised.value), (bad, str(raised.value))


# -- startup indexes that cannot be created ----------------------------------------------------


def _refused_index(make_daemon, db_name: str):
    daemon = make_daemon(db_name=db_name, start=False)
    daemon.expected_errors = True
    daemon.start(wait=False)

    def degraded():
        try:
            status, body = health(daemon)
        except OSError:
            return None
        return body if status == 503 and body.get("cause", "").startswith("index ") else None

    body = wait_for(degraded, 30, "/health to name the index")
    assert body["status"] == "degraded" and body["mongodb"] == "connected"
    answer = daemon.proxy().categoriesService.get_all()
    assert answer["code"] == "UNAVAILABLE"
    return daemon, body["cause"]


def test_a_mongoose_index_on_the_same_keys_is_named_then_the_daemon_goes_on(mongo, make_daemon):
    db_name = f"t_mongoose_{int(time.time() * 1000) % 10**8}"
    mongo[db_name].users.create_index([("email", 1)], unique=True)  # Mongoose's email_1
    daemon, cause = _refused_index(make_daemon, db_name)
    assert "index email_unique {email: 1} on users" in cause and "email_1" in cause, cause
    time.sleep(6)  # one more attempt: the line is not repeated
    lines = [line for line in daemon.log().splitlines() if "cannot create the startup indexes" in line]
    assert len(lines) == 1 and cause in lines[0]
    assert "waiting for the database" not in daemon.log()

    mongo[db_name].users.drop_index("email_1")  # the operator's fix
    wait_for(daemon.serving, 30, "the daemon to create its indexes once the conflict is gone")
    assert daemon.proxy().categoriesService.get_all()["success"]
    mongo.drop_database(db_name)


def test_duplicates_under_a_unique_index_are_named(mongo, make_daemon):
    db_name = f"t_duplicates_{int(time.time() * 1000) % 10**8}"
    mongo[db_name].users.insert_many([user_doc("Ann", email="same@example.com"),
                                     user_doc("Bob", email="same@example.com")])
    _, cause = _refused_index(make_daemon, db_name)
    assert "index email_unique {email: 1} on users" in cause and "duplicate key" in cause, cause
    mongo.drop_database(db_name)
