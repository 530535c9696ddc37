"""Connection strings as users copy them (mongosh, Compass, Mongoose, Atlas, the drivers' docs).

Every option pymongo's URI parser accepts is honoured, accepted with one
startup notice naming it, or refused with one line saying why; the database
is ``DB_NAME``, else the URI's path, else ``worknet``.  Parsing is checked
without a network; each honoured option is then checked on a real daemon
against the test SecantusDB (or a TLS + auth one for the names of the
databases), where an operator would look: calls, the log, ``/metrics``,
``--check-config``, the server's profiler and the daemon's sockets.
"""

from __future__ import annotations

import re
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import bson
import pymongo
import pytest
from pymongo import common

from tests.conftest import Daemon, free_port, wait_for
from tests.support import http_get
from tests.test_ops import base_env, twistd
from tests.tls_support import SecureDatabase
from worknet.config import ConfigError, database_names, load_settings, startup_lines
from worknet.store import connect

SECRET = "x" * 40


EMPTY_ENV = Path(tempfile.mkdtemp()) / ".env"  # so that no .env of the working directory is read
EMPTY_ENV.write_text("")


def settings_of(uri: str, **env: str):
    return load_settings({"MONGODB_URI": uri, "NODE_ENV": "test", "JWT_SECRET": SECRET, **env},
                         env_file=str(EMPTY_ENV))


def port_of(uri: str) -> int:
    return int(urllib.parse.urlsplit(uri).port or 27017)


# -- every option pymongo validates has a place ------------------------------------------------

# a value pymongo accepts, for each option accepted with a notice
NOTICE_SAMPLES = {
    "retrywrites": "true", "retryreads": "true", "enableoverloadretargeting": "true", "maxadaptiveretries": "3",
    "compressors": "zlib", "zlibcompressionlevel": "6", "localthresholdms": "15", "readpreferencetags": "dc:ny",
    "maxstalenessseconds": "120", "waitqueuetimeoutms": "5000", "waitqueuemultiple": "2", "maxconnecting": "2",
    "connect": "false", "servermonitoringmode": "poll", "authmechanismproperties": "SERVICE_NAME:mongodb",
    "tlsdisableocspendpointcheck": "true", "tz_aware": "true", "datetime_conversion": "DATETIME",
    "unicode_decode_error_handler": "ignore",
}


def test_every_option_pymongo_validates_is_honoured_noticed_or_refused():
    known = set(common.URI_OPTIONS_VALIDATOR_MAP)
    places = [connect.HONOURED, set(connect.NOTICES), set(connect.REFUSED), connect.NOT_IN_URI]
    for name in known:
        assert sum(name in place for place in places) == 1, name
    assert set().union(*places) <= known | connect.IMPLIED
    assert set(NOTICE_SAMPLES) == set(connect.NOTICES)


@pytest.mark.parametrize("name", sorted(NOTICE_SAMPLES))
def test_an_option_that_cannot_matter_is_accepted_with_one_notice_naming_it(name):
    uri = f"mongodb://127.0.0.1/?{name}={NOTICE_SAMPLES[name]}"
    if name == "tlsdisableocspendpointcheck":
        uri += "&tls=true"
    lines = startup_lines(settings_of(uri))
    naming = [line for line in lines if name in line.lower()]
    assert len(naming) == 1 and "accepted and ignored: " in naming[0], lines


def test_tls_insecure_implies_no_ocsp_notice():
    assert not connect.parse("mongodb://h/?tls=true&tlsInsecure=true", "test").notices


@pytest.mark.parametrize(("uri", "named", "why"), [
    ("mongodb://h/?w=0", "option w 0", "every write must be acknowledged"),
    ("mongodb://h/?readPreference=secondary", "readPreference secondary", "reads from the primary only"),
    ("mongodb://h/?readPreference=secondaryPreferred", "readPreference secondaryPreferred", "primary only"),
    ("mongodb://h/?readPreference=nearest", "readPreference nearest", "primary only"),
    ("mongodb://h/?tls=true&tlsCertificateKeyFile=/x.pem&tlsCertificateKeyFilePassword=pw",
     "tlsCertificateKeyFilePassword", "an encrypted client key cannot be used"),
    ("mongodb://h/?tls=true&tlsCRLFile=/crl.pem", "tlsCRLFile", "would trust a revoked certificate"),
    ("mongodb://h/?loadBalanced=true", "loadBalanced", "behind a load balancer"),
    ("mongodb://h/?readConcernLevel=strong", "readConcernLevel", "not a read concern level"),
    ("mongodb://h/?maxPoolSize=5&minPoolSize=6", "minPoolSize", "more than maxPoolSize"),
])
def test_what_is_unsafe_to_ignore_is_refused_with_why(uri, named, why):
    with pytest.raises(ConfigError) as refused:
        connect.parse(uri, "production")
    assert named in str(refused.value) and why in str(refused.value)
    assert "\n" not in str(refused.value) and "pw" not in str(refused.value).replace("Password", "")


# -- honoured: the values the daemon takes from the URI ----------------------------------------

@pytest.mark.parametrize(("query", "env", "size", "said"), [
    ("", {}, 10, None),
    ("maxPoolSize=25", {}, 25, None),
    ("minPoolSize=15", {}, 15, None),  # a floor above the default size
    ("maxPoolSize=5&minPoolSize=3", {}, 5, None),
    ("maxPoolSize=0", {}, 10, None),  # 0 is pymongo's "no limit": the default size
    ("maxPoolSize=500", {}, 200, "the pool has 200"),
    ("maxPoolSize=25", {"MONGODB_POOL_SIZE": "7"}, 7, "MONGODB_POOL_SIZE / --pool-size sets the pool (7"),
])
def test_max_and_min_pool_size_size_the_pool(query, env, size, said):
    settings = settings_of(f"mongodb://h/?{query}", **env)
    assert settings.mongodb_pool_size == size
    lines = [line for line in startup_lines(settings) if "pool" in line]
    assert lines == ([] if said is None else [_one_line(said, lines)])


def _one_line(fragment: str, lines: list[str]) -> str:
    found = [line for line in lines if fragment in line]
    assert len(found) == 1, (fragment, lines)
    return found[0]


@pytest.mark.parametrize(("query", "env", "deadline", "said"), [
    ("", {}, 5.0, None),
    ("socketTimeoutMS=45000", {}, 45.0, None),
    ("timeoutMS=2500", {}, 2.5, None),
    ("timeoutMS=2500&socketTimeoutMS=45000", {}, 2.5, None),  # timeoutMS supersedes, as in pymongo
    ("socketTimeoutMS=0", {}, 120.0, "no limit"),
    ("timeoutMS=600000", {}, 120.0, "the per-call deadline is 120 s"),
    ("timeoutMS=2500", {"DB_TIMEOUT_SECONDS": "3"}, 3.0, "DB_TIMEOUT_SECONDS sets the per-call deadline"),
])
def test_timeout_ms_and_socket_timeout_ms_give_the_per_call_deadline(query, env, deadline, said):
    settings = settings_of(f"mongodb://h/?{query}", **env)
    assert settings.db_timeout_seconds == deadline
    lines = [line for line in startup_lines(settings) if "deadline" in line]
    assert lines == ([] if said is None else [_one_line(said, lines)])


def test_the_other_honoured_options_reach_the_target():
    target = connect.parse(
        "mongodb://h/?connectTimeoutMS=10000&serverSelectionTimeoutMS=2000&directConnection=true"
        "&readConcernLevel=majority&maxIdleTimeMS=60000&heartbeatFrequencyMS=2500"
        "&uuidRepresentation=javaLegacy&w=1&fsync=true", "production")
    assert (target.connect_timeout, target.server_selection_timeout) == (10.0, 2.0)
    assert target.direct and target.read_concern == "majority"
    assert (target.max_idle, target.heartbeat) == (60.0, 2.5)
    assert target.uuid_representation == bson.binary.UuidRepresentation.JAVA_LEGACY
    assert target.write_concern == {"w": 1, "j": True}  # fsync: on disk, i.e. the journal
    assert not target.notices
    srv = connect.parse("mongodb+srv://cluster0.example.net/?srvAllowedHostsSuffix=example.net", "production")
    assert srv.srv_allowed_hosts_suffix == "example.net"
    with pytest.raises(ConfigError, match="multiple hosts with directConnection=true"):  # pymongo's check
        connect.parse("mongodb://a,b/?directConnection=true", "production")


def test_read_concern_goes_on_reads_only():
    element = connect.read_concern_element("majority")

    def with_concern(command: dict) -> dict | None:
        body = connect.with_read_concern(bson.encode(command), element)
        return None if body is None else bson.decode(body)

    for read in ({"find": "gigs", "filter": {"a": 1}}, {"count": "gigs"}, {"distinct": "gigs", "key": "a"},
                 {"aggregate": "gigs", "pipeline": [{"$match": {}}], "cursor": {}}):
        assert with_concern(read) == {**read, "readConcern": {"level": "majority"}}
    for other in ({"insert": "gigs", "documents": []}, {"getMore": 1, "collection": "gigs"},
                  {"find": "gigs", "readConcern": {"level": "snapshot"}},
                  {"aggregate": "gigs", "pipeline": [{"$match": {}}, {"$merge": "x"}]},
                  {"aggregate": "gigs", "pipeline": [{"$changeStream": {}}]}):
        assert with_concern(other) is None, other


def test_direct_connection_drops_the_members_a_hello_lists():
    hello = {"ismaster": True, "hosts": ["a:1", "b:2"], "passives": ["c:3"], "arbiters": [], "setName": "rs0"}
    assert connect.direct_hello(hello) == {"ismaster": True, "setName": "rs0"}


# -- the database: DB_NAME, else the URI's path, else worknet ------------------------------------

def test_database_names():
    assert database_names("mongodb://h/worknet_prod") == ("worknet_prod", None)
    assert database_names("mongodb://h/worknet_prod", "other") == ("other", None)
    assert database_names("mongodb://h/") == ("worknet", None)
    assert database_names(None) == ("worknet", None)
    assert database_names("mongodb://u:p@h/WorkNetBD", "worknet") == ("worknet", "WorkNetBD")
    assert database_names("mongodb://u:p@h/WorkNetBD?authSource=admin") == ("WorkNetBD", "admin")
    assert database_names("mongodb://u:p@h/") == ("worknet", "admin")
    assert settings_of("mongodb://h/worknet_prod").db_name == "worknet_prod"
    assert settings_of("mongodb://h/worknet_prod", DB_NAME="other").db_name == "other"
    lines = startup_lines(settings_of("mongodb://u:p@h/WorkNetBD", DB_NAME="worknet"))
    assert lines == ["database worknet (DB_NAME) holds the data; the URI's path WorkNetBD is not used for data; "
                     "the user authenticates against WorkNetBD"]


# -- real daemons -------------------------------------------------------------------------------

def copied(database: str) -> list[str]:
    """Connection strings as mongosh, Compass/Mongoose, Atlas and the drivers' docs print them."""
    base = f"mongodb://127.0.0.1:{port_of(database)}/"
    return [
        base + "?directConnection=true&serverSelectionTimeoutMS=2000&appName=mongosh+2.3.1",
        base + "?maxPoolSize=20&minPoolSize=5&connectTimeoutMS=10000&socketTimeoutMS=45000",
        base + "?retryWrites=true&w=majority&readConcernLevel=majority&maxIdleTimeMS=60000&appName=Cluster0",
        base + "?compressors=zstd,snappy,zlib&zlibCompressionLevel=6&heartbeatFrequencyMS=10000"
               "&localThresholdMS=15&waitQueueTimeoutMS=5000&uuidRepresentation=standard&timeoutMS=5000",
        base + "?readPreference=primaryPreferred&maxStalenessSeconds=120&w=majority&wtimeoutMS=2500&journal=true",
    ]


def connected(rpc) -> None:
    """``ping`` says connected (its probe has a 1 s deadline: on a loaded machine, ask again)."""
    wait_for(lambda: rpc.ping()["mongodb"] == "connected", 15, "ping to say connected")


@pytest.mark.parametrize("which", range(5))
def test_a_copied_connection_string_starts_the_daemon(make_daemon, database, which):
    uri = copied(database)[which]
    daemon = make_daemon(mongodb_uri=uri)
    rpc = daemon.proxy()
    connected(rpc)
    made = rpc.categoriesService.create("Copied", "copied", "from a copied URI")
    assert made["success"], made
    assert rpc.categoriesService.get_by_slug("copied")["success"]
    log = daemon.log()
    for name, _ in urllib.parse.parse_qsl(uri.partition("?")[2]):
        if name.lower() in connect.NOTICES:
            assert log.count(f"MONGODB_URI option {name} is accepted and ignored") == 1, name


class WithoutDbName(Daemon):
    """A daemon started without --db-name (DB_NAME only from its environment, if at all)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--db-name")
        return argv[:at] + argv[at + 2:]


def start(tmp_path: Path, uri: str, **env: str) -> Daemon:
    # these tests register a user to see where it lands: the cheapest bcrypt cost keeps a loaded machine
    # (whose idle-priority hashing threads wait for every other task) inside the call's deadline
    daemon = WithoutDbName(tmp_path, uri, "", **{"BCRYPT_ROUNDS": "4", **env})
    daemon.start()
    return daemon


def test_the_uri_path_chooses_the_database(tmp_path, database, mongo):
    name = f"t_path_{uuid.uuid4().hex[:8]}"
    daemon = start(tmp_path, f"mongodb://127.0.0.1:{port_of(database)}/{name}")
    try:
        made = daemon.proxy().usersService.register("pathuser", "path@example.com", "pass-word-1", "client")
        assert made["success"], made
        assert mongo[name].users.count_documents({"usernameLower": "pathuser"}) == 1
        assert mongo["worknet"].users.count_documents({"usernameLower": "pathuser"}) == 0
        assert daemon.log().count(f"database {name}, as the URI's path names it") == 1
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    server = SecureDatabase(tmp_path_factory.mktemp("uri-secure-db"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_db_name_and_a_different_path_say_which_holds_the_data_and_which_authenticates(tmp_path, secure):
    """The original .env: the path names the database the user is in, DB_NAME the one for the data."""
    admin = pymongo.MongoClient(secure.uri(), serverSelectionTimeoutMS=5000, directConnection=True)
    auth_db, data_db = f"WorkNetBD_{uuid.uuid4().hex[:6]}", f"t_data_{uuid.uuid4().hex[:6]}"
    admin[auth_db].command("createUser", "pathuser", pwd=secure.password, roles=[{"role": "root", "db": "admin"}],
                           mechanisms=["SCRAM-SHA-256"])
    uri = secure.uri("pathuser", path=auth_db, authSource=None)
    daemon = start(tmp_path, uri, DB_NAME=data_db)
    try:
        made = daemon.proxy().usersService.register("envuser", "env@example.com", "pass-word-1", "client")
        assert made["success"], made
        assert admin[data_db].users.count_documents({"usernameLower": "envuser"}) == 1
        assert "users" not in admin[auth_db].list_collection_names()
        line = (f"database {data_db} (DB_NAME) holds the data; the URI's path {auth_db} is not used for data; "
                f"the user authenticates against {auth_db}")
        assert daemon.log().count(line) == 1
    finally:
        daemon.stop()
        admin.close()

    done = twistd(tmp_path, "worknet-rpc", "--check-config", env=base_env(tmp_path, MONGODB_URI=uri, DB_NAME=data_db))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 0 and len(lines) == 1, lines
    assert f"data in database {data_db}, user authenticated against {auth_db}" in lines[0]
    assert secure.password not in lines[0]


def test_check_config_prints_the_database_of_the_path(tmp_path, database):
    uri = f"mongodb://127.0.0.1:{port_of(database)}/worknet_prod?directConnection=true&serverSelectionTimeoutMS=2000"
    done = twistd(tmp_path, "worknet-rpc", "--check-config", env=base_env(tmp_path, MONGODB_URI=uri))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 0 and len(lines) == 1, lines
    assert "data in database worknet_prod, no user" in lines[0]


@pytest.mark.parametrize(("query", "named"), [
    ("w=0", "MONGODB_URI option w 0 (unacknowledged) is not supported"),
    ("readPreference=secondary", "MONGODB_URI option readPreference secondary is not supported"),
    ("tls=true&tlsCertificateKeyFile=/etc/worknet/client.pem&tlsCertificateKeyFilePassword=hunter2-pw",
     "MONGODB_URI option tlsCertificateKeyFilePassword is not supported"),
    ("tls=true&tlsCRLFile=/etc/worknet/crl.pem", "MONGODB_URI option tlsCRLFile is not supported"),
    ("loadBalanced=true", "MONGODB_URI option loadBalanced is not supported"),
])
def test_a_refused_option_stops_the_daemon_with_one_line(tmp_path, database, query, named):
    uri = f"mongodb://127.0.0.1:{port_of(database)}/?{query}"
    done = twistd(tmp_path, "-n", "--pidfile=", "worknet-rpc", "--mongodb-uri", uri,
                  env=base_env(tmp_path, NODE_ENV="production"))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, lines)
    assert lines[0].startswith("worknet-rpc: configuration error: " + named), lines
    assert "hunter2-pw" not in lines[0]


def metric(daemon: Daemon, name: str) -> float:
    text = http_get(daemon.port, "/metrics")[1]
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_max_pool_size_is_the_pool_the_daemon_opens(make_daemon, database):
    daemon = make_daemon(mongodb_uri=database + "?maxPoolSize=3&minPoolSize=2")
    assert metric(daemon, "worknet_db_pool_size") == 3
    wait_for(lambda: metric(daemon, "worknet_db_pool_connections_up") == 3, 15, "3 pool connections")
    floor = make_daemon(mongodb_uri=database + "?minPoolSize=12")
    assert metric(floor, "worknet_db_pool_size") == 12
    overridden = make_daemon(mongodb_uri=database + "?maxPoolSize=3", MONGODB_POOL_SIZE="4")
    assert metric(overridden, "worknet_db_pool_size") == 4
    assert "MONGODB_POOL_SIZE / --pool-size sets the pool (4 connections)" in overridden.log()


def timed_unavailable(daemon: Daemon) -> float:
    started = time.monotonic()
    answer = daemon.proxy().categoriesService.get_all()
    assert answer["success"] is False and answer["code"] == "UNAVAILABLE", answer
    return time.monotonic() - started


def http_up(daemon: Daemon) -> bool:
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()[-2000:]
    try:
        return http_get(daemon.port, "/health")[0] in (200, 503)
    except OSError:
        return False


def test_timeout_ms_is_the_per_call_deadline(make_daemon):
    """No database behind the port: a call waits its deadline, then answers UNAVAILABLE."""
    dead = f"mongodb://127.0.0.1:{free_port()}/"
    short = make_daemon(mongodb_uri=dead + "?timeoutMS=1500", start=False, DB_TIMEOUT_SECONDS="")
    longer = make_daemon(mongodb_uri=dead + "?socketTimeoutMS=4000", start=False, DB_TIMEOUT_SECONDS="")
    overridden = make_daemon(mongodb_uri=dead + "?socketTimeoutMS=20000", start=False, DB_TIMEOUT_SECONDS="1")
    for daemon in (short, longer, overridden):
        daemon.start(wait=False)
    for daemon in (short, longer, overridden):
        wait_for(lambda d=daemon: http_up(d), 30, "the daemon's port")
    assert 1.4 <= timed_unavailable(short) < 3.4
    assert 3.9 <= timed_unavailable(longer) < 6.5
    assert 0.9 <= timed_unavailable(overridden) < 2.9


def test_server_selection_timeout_ms_is_how_long_startup_waits(make_daemon, tmp_path):
    dead = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=1000"
    daemon = make_daemon(mongodb_uri=dead, start=False, DB_TIMEOUT_SECONDS="")  # a call's deadline: 5 s
    daemon.expected_errors = True
    daemon.start(wait=False)
    wait_for(lambda: "within 1 s (serverSelectionTimeoutMS); still trying" in daemon.log(), 20, "the log line")
    assert timed_unavailable(daemon) < 1.0, "past the wait, calls answer at once, not at their deadline"

    started = time.monotonic()
    done = twistd(tmp_path, "worknet-rpc", "--check-config", "--mongodb-uri", dead,
                  env=base_env(tmp_path, DB_TIMEOUT_SECONDS="30"))
    lines = (done.stdout + done.stderr).strip().splitlines()
    # nothing listens there: said as such, after the URI's 1 s of server selection (not DB_TIMEOUT_SECONDS' 30)
    assert done.returncode == 2 and len(lines) == 1 and "connection refused: nothing listens" in lines[0], lines
    assert time.monotonic() - started < 20


class Silent:
    """A host that accepts connections and never answers (a hung server, a firewall that swallows):
    records how long each connection stays open before the daemon gives up on it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[float] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        opened = time.monotonic()
        conn.settimeout(60)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            return
        self.held.append(time.monotonic() - opened)
        conn.close()

    def close(self) -> None:
        self.running = False
        self.sock.close()


def test_connect_timeout_ms_bounds_each_connection_and_its_handshake(make_daemon):
    silent = Silent()
    try:
        uri = f"mongodb://127.0.0.1:{silent.port}/?maxPoolSize=1"
        daemon = make_daemon(mongodb_uri=uri + "&connectTimeoutMS=2500", start=False)
        daemon.expected_errors = True
        daemon.start(wait=False)
        wait_for(lambda: len(silent.held) >= 2, 30, "two connections given up")
        assert all(2.3 <= held < 5.0 for held in silent.held[:2]), silent.held
        daemon.stop()
        silent.held.clear()
        default = make_daemon(mongodb_uri=uri, start=False)
        default.expected_errors = True
        default.start(wait=False)
        wait_for(lambda: len(silent.held) >= 2, 30, "two connections given up")
        assert all(held < 2.0 for held in silent.held[:2]), silent.held
    finally:
        silent.close()


def test_read_concern_level_goes_on_the_daemons_reads(make_daemon, database, mongo):
    name = f"t_rc_{uuid.uuid4().hex[:8]}"
    mongo[name].command("profile", 2)
    try:
        daemon = make_daemon(db_name=name, mongodb_uri=database + "?readConcernLevel=majority")
        rpc = daemon.proxy()
        assert rpc.categoriesService.create("Profiled", "profiled", "read concern")["success"]
        assert rpc.categoriesService.get_by_slug("profiled")["success"]
        reads = [p["command"] for p in mongo[name].system.profile.find({"command.find": "categories"})]
        assert reads and all(r.get("readConcern") == {"level": "majority"} for r in reads), reads
        writes = [p["command"] for p in mongo[name].system.profile.find({"command.insert": "categories"})]
        assert writes and not any("readConcern" in w for w in writes)
    finally:
        mongo[name].command("profile", 0)


def daemon_ports(daemon: Daemon, server_port: int) -> set[int]:
    """The local ports of the daemon's established TCP connections to ``server_port`` (from /proc)."""
    assert daemon.process is not None
    pid = daemon.process.pid
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_max_idle_time_ms_replaces_idle_pool_connections(make_daemon, database):
    """The catalogue's compactor reads every 0.2 s, one pool connection after the other: with ten,
    each one idles about 2 s between uses, past a maxIdleTimeMS of 1 s."""
    server = port_of(database)
    daemon = make_daemon(mongodb_uri=database + "?maxPoolSize=10&maxIdleTimeMS=1000")
    control = make_daemon(mongodb_uri=database + "?maxPoolSize=10")
    rpc = daemon.proxy()
    assert rpc.categoriesService.get_all()["success"]
    first, kept = daemon_ports(daemon, server), daemon_ports(control, server)
    assert first and kept
    wait_for(lambda: len(first - daemon_ports(daemon, server)) >= 2, 20, "idle connections replaced")
    assert rpc.categoriesService.get_all()["success"]
    connected(rpc)
    assert kept <= daemon_ports(control, server), "without maxIdleTimeMS the connections stay"
