"""Running the daemon as an operator does: logs, request ids, --version, --check-config, readiness, systemd, Docker."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import xmlrpc.client
from pathlib import Path

import pytest

import worknet
from tests.conftest import BIN, ROOT, free_port, wait_for

PING = b'<?xml version="1.0"?><methodCall><methodName>ping</methodName><params/></methodCall>'
MISSING = (b'<?xml version="1.0"?><methodCall><methodName>categoriesService.get_by_slug</methodName>'
           b"<params><param><value>no-such-slug</value></param></params></methodCall>")


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NODE_ENV": "test",
            "JWT_SECRET": secrets.token_urlsafe(48), **extra}


def twistd(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run([str(BIN / "twistd"), *args], cwd=tmp_path, env=env or base_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml", **(headers or {})})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def with_args(daemon, *extra: str):
    argv = daemon.argv
    daemon.argv = lambda: [*argv(), *extra]
    return daemon


# -- --version / --check-config -------------------------------------------------------------------------------------

def test_version_prints_worknets_version(tmp_path):
    done = twistd(tmp_path, "worknet-rpc", "--version", env={"PATH": os.environ["PATH"], "RPC_PORT": "not-a-port"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"worknet-rpc {worknet.__version__}"


def test_check_config_accepts_good_settings_and_a_reachable_database(tmp_path, database):
    done = twistd(tmp_path, "worknet-rpc", "--check-config", "--mongodb-uri", database)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 0 and len(lines) == 1 and "configuration ok" in lines[0], lines
    assert "127.0.0.1" in lines[0]


@pytest.mark.parametrize("args, mentions", [
    (["--mongodb-uri", "mongodb://operator:pa55-word-x@127.0.0.1:{port}/?authSource=admin"],
     "127.0.0.1:{port}: connection refused: nothing listens on 127.0.0.1:{port}"),
    (["--mongodb-uri", "mongodb://operator:pa55-word-x@no-such-host.invalid:27017/"],
     "no-such-host.invalid:27017: the host name no-such-host.invalid does not resolve"),
    (["--mongodb-uri", "not-a-uri"], "MONGODB_URI"),
    (["--listen", "ssl:{port}:privateKey=/nonexistent/key.pem"], "RPC_LISTEN"),
    (["--data-dir", "/proc/forbidden/db"], "DATA_DIR"),
])
def test_check_config_refuses_with_one_line_and_exit_2(tmp_path, args, mentions):
    port = free_port()
    args, mentions = [a.format(port=port) for a in args], mentions.format(port=port)
    done = twistd(tmp_path, "worknet-rpc", "--check-config", *args,
                  env=base_env(tmp_path, DB_TIMEOUT_SECONDS="1"))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and mentions in lines[0], (done.returncode, lines)
    assert "pa55-word-x" not in lines[0]


def test_missing_embedded_extra_is_one_clear_line(tmp_path):
    """An install without the [embedded] extra and no MONGODB_URI: a virtualenv whose only packages are
    this project's (reached through a .pth), with no secantusd-py beside its python nor on PATH."""
    venv = tmp_path / "venv"
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    base = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
    (venv / "bin" / "python").symlink_to(base)
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n")
    (site / "project.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (Path(p) / "secantusd-py").exists())
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, "-n", "--pidfile=", "worknet-rpc"],
                          cwd=tmp_path, env={"PATH": path, "NODE_ENV": "development"},
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "MONGODB_URI is unset" in lines[0]
    assert f"{venv / 'bin' / 'python'} -m pip install --require-hashes -r requirements/embedded.txt" in lines[0]


@pytest.mark.parametrize("host, cause", [
    ("127.0.0.1:{port}", "connection refused: nothing listens on 127.0.0.1:{port}"),
    ("no-such-host.invalid:27017", "the host name no-such-host.invalid does not resolve"),
], ids=["refused", "unresolvable"])
def test_the_daemon_names_why_the_database_is_not_reachable(make_daemon, host, cause):
    port = free_port()
    host, cause = host.format(port=port), cause.format(port=port)
    daemon = make_daemon(mongodb_uri=f"mongodb://{host}/", start=False)
    daemon.start(wait=False)
    line = wait_for(lambda: next((line for line in daemon.log().splitlines() if "waiting for the database" in line),
                                 None), 30, "the waiting line")
    assert line.endswith(f"waiting for the database at {host}: {cause}"), line


# -- logs ----------------------------------------------------------------------------------------------------------

def test_log_level_error_silences_every_logger(make_daemon):
    daemon = make_daemon(LOG_LEVEL="ERROR")
    assert post(daemon.port, PING)[0] == 200
    assert post(daemon.port, MISSING)[0] == 200
    assert daemon.stop() == 0
    assert daemon.log().strip() == "", daemon.log()[:2000]


def test_txmongo_factory_lines_only_with_debug(make_daemon):
    info = make_daemon(LOG_LEVEL="INFO")
    info.stop()
    assert "Starting factory" not in info.log() and "ms ok" not in info.log()
    debug = make_daemon(LOG_LEVEL="DEBUG")
    debug.stop()
    assert "Starting factory" in debug.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_log_lines_carry_the_request_id_of_the_response_header(make_daemon, workers):
    """With --workers too: a worker's lines reach the log whole, fields and request ids kept."""
    daemon = with_args(make_daemon(start=False, RPC_WORKERS=workers), "--log-format=json")
    daemon.start()
    ids = []
    for body in (PING, MISSING, PING):
        status, headers, _ = post(daemon.port, body)
        assert status == 200
        ids.append(headers["x-request-id"])
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    _, headers, _ = post(daemon.port, PING, {"X-Request-Id": "node-backend-42"})
    assert headers["x-request-id"] == "node-backend-42"
    _, headers, _ = post(daemon.port, PING, {"X-Request-Id": "bad id with spaces <>"})
    assert headers["x-request-id"] != "bad id with spaces <>"
    assert daemon.stop() == 0

    records = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
    assert records and all({"time", "level", "namespace", "message"} <= r.keys() for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    calls = {r["request_id"]: r for r in records if "duration_ms" in r}
    assert set(ids) | {"node-backend-42"} <= calls.keys()
    assert calls[ids[0]]["method"] == "ping" and calls[ids[0]]["outcome"] == "ok"
    assert calls[ids[1]]["method"] == "categoriesService.get_by_slug" and calls[ids[1]]["outcome"] == "NOT_FOUND"
    assert isinstance(calls[ids[1]]["duration_ms"], float) and calls[ids[1]]["level"] == "info"
    assert any(r["message"] == "Received SIGTERM, shutting down." for r in records)


def test_text_log_lines_carry_the_request_id_and_sigterm_is_logged(daemon):
    _, headers, _ = post(daemon.port, PING)
    assert daemon.stop() == 0
    call = [line for line in daemon.log().splitlines() if " ping " in line and " ms ok" in line]
    assert len(call) == 1 and f"[worknet.rpc#info] [{headers['x-request-id']}] ping" in call[0], call
    assert "Received SIGTERM, shutting down." in daemon.log()


def test_daemon_log_rotates_by_size_keeps_a_bounded_number_of_files_and_their_mode(tmp_path, database):
    port, pidfile, logfile = free_port(), tmp_path / "w.pid", tmp_path / "logs" / "worknet.log"
    logfile.parent.mkdir()
    env = base_env(tmp_path, LOG_LEVEL="DEBUG")
    subprocess.run(
        [str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}", "worknet-rpc",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--mongodb-uri", database, "--db-name", f"rot_{port}",
         "--log-rotate-bytes=2000", "--log-keep=2"],
        cwd=tmp_path, env=env, check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    wait_for(pidfile.exists, 30, "the pidfile")
    pid = int(pidfile.read_text())
    try:
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        wait_for(lambda: _answers(proxy), 30, "the daemonised server")
        for _ in range(40):
            proxy.categoriesService.get_by_slug("no-such-slug")
        os.kill(pid, signal.SIGUSR1)  # logrotate's way: rotate now
        wait_for(lambda: logfile.exists() and logfile.stat().st_size < 2000, 10, "the SIGUSR1 rotation")
        proxy.ping()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the daemon to exit")
    names = sorted(p.name for p in logfile.parent.iterdir())
    assert names == ["worknet.log", "worknet.log.1", "worknet.log.2"], names
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in logfile.parent.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes  # twistd's daemon umask (0077) would make them 0600


def _answers(proxy) -> bool:
    try:
        return proxy.ping()["mongodb"] == "connected"
    except OSError:
        return False


# -- readiness, systemd, Docker ------------------------------------------------------------------------------------

def test_notify_socket_gets_ready_once_serving_and_stopping_at_the_end(make_daemon, tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(30)
        daemon = make_daemon(start=False, NOTIFY_SOCKET=str(path))
        daemon.start(wait=False)
        message = listener.recv(4096)
        assert message.split(b"\n")[0] == b"READY=1"
        assert daemon.serving(), "READY=1 came before /health answered 200"
        daemon.stop()
        assert listener.recv(4096) == b"STOPPING=1"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; .ci/run does so as root)")
    return found


def test_systemd_unit_exposure_is_at_most_2_5():
    unit = ROOT / "deploy" / "worknet-rpc.service"
    done = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for worknet-rpc\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr
    assert float(found.group(1)) <= 2.5, done.stdout
    text = unit.read_text()
    for setting in ("Type=notify", "DynamicUser=yes", "StateDirectory=worknet-rpc", "CapabilityBoundingSet=\n",
                    "SystemCallFilter=@system-service", "UMask=0077", "DATA_DIR=/var/lib/worknet-rpc/db"):
        assert setting in text, setting


def unit_environment(unit: str, env_file: Path) -> dict[str, str]:
    """The environment systemd gives the service: the unit's Environment= lines, then its EnvironmentFile=,
    which wins (systemd.exec: "settings from these files override settings made with Environment=")."""
    import shlex

    from dotenv import dotenv_values

    environment: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            environment.update(item.split("=", 1) for item in shlex.split(line[len("Environment="):]))
    assert re.search(r"^EnvironmentFile=/etc/worknet-rpc/env$", unit, re.M)
    environment.update({k: v or "" for k, v in dotenv_values(env_file).items()})
    return environment


def test_the_systemd_units_env_example_keeps_the_units_own_settings(tmp_path):
    """The example file the unit names, edited as it says (placeholders replaced), plus the unit: the log
    goes to the journal only and the embedded database to the state directory; systemd-analyze verify passes."""
    unit = (ROOT / "deploy" / "worknet-rpc.service").read_text()
    named = re.search(r"settings in /etc/worknet-rpc/env \((?:start from )?(deploy/[\w.-]+)", unit)
    assert named, "the unit names the example of /etc/worknet-rpc/env"
    example = (ROOT / named.group(1)).read_text()
    assert f"start from [{named.group(1)}]({named.group(1)})" in (ROOT / "README.md").read_text()
    edited = tmp_path / "env"
    edited.write_text(example.replace("change-me-to-a-long-random-token", secrets.token_urlsafe(32))
                      .replace("JWT_SECRET=change-me", f"JWT_SECRET={secrets.token_urlsafe(48)}"))
    environment = unit_environment(unit, edited)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    from worknet.config import load_settings

    settings = load_settings(environ=environment, env_file=str(empty))
    assert (settings.log_file, settings.data_dir) == ("", "/var/lib/worknet-rpc/db"), named.group(1)
    assert settings.node_env == "production" and not settings.embedded_database
    without_mongodb = {k: v for k, v in environment.items() if k != "MONGODB_URI"}  # "delete MONGODB_URI"
    assert load_settings(environ=without_mongodb, env_file=str(empty)).data_dir == "/var/lib/worknet-rpc/db"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): the unit's syntax is unchecked")
    local = tmp_path / "worknet-rpc.service"  # verify wants ExecStart's program to exist: this checkout's twistd
    local.write_text(unit.replace("/opt/worknet-rpc/.venv/bin/twistd", str(BIN / "twistd")))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


def test_healthcheck_follows_rpc_port_and_rpc_listen(daemon, tmp_path):
    script = str(ROOT / "deploy" / "healthcheck.py")

    def check(**env: str) -> int:
        return subprocess.run([sys.executable, script], cwd=tmp_path, env=base_env(tmp_path, **env),
                              capture_output=True, timeout=30).returncode

    assert check(RPC_PORT=str(daemon.port)) == 0
    assert check(RPC_LISTEN=f"tcp:{daemon.port}:interface=127.0.0.1") == 0
    assert check(RPC_HOST="0.0.0.0", RPC_PORT=str(daemon.port)) == 0  # noqa: S104 - asked on loopback, never bound
    assert check(RPC_PORT=str(free_port())) == 1


def test_dockerfile_is_pinned_hash_locked_and_production_only():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    assert "HEALTHCHECK" in text and "healthcheck.py" in text and "org.opencontainers.image.version" in text
    assert "getPlugins" in text  # the plugin cache is written at build time
    assert "requirements/dev.txt" not in text and "[test" not in text
    done = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_empty_log_file_setting_writes_no_log_file(make_daemon, tmp_path):
    daemon = make_daemon(LOG_FILE="")
    assert post(daemon.port, PING)[0] == 200
    daemon.stop()
    assert " ping " in daemon.log()  # the console still has it
    assert not (tmp_path / "rpc_server.log").exists()
