"""Starting the daemon wrong: one line naming the option or setting, exit code 2, no traceback, no usage dump."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess

import pytest

from tests.conftest import BIN, free_port
from worknet.config import load_settings
from worknet.startup import PLACEHOLDER_TOKEN, check_listen


def run_daemon(tmp_path, *options: str, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "NODE_ENV": "development", **env}
    return subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc", *options], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, lines[-30:])
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("options, env, mentions", [
    (["--bogus-option"], {}, "--bogus-option"),
    (["--log-level=LOUD"], {}, "--log-level"),
    (["--pool-size=0"], {}, "--pool-size"),
    (["--pool-size=abc"], {}, "--pool-size"),
    (["--listen", "tcp:abc"], {}, "RPC_LISTEN (--listen)"),
    ([], {"RPC_LISTEN": "garbage"}, "RPC_LISTEN"),
    (["--listen", "ssl:8443:privateKey=/nonexistent/key.pem:certKey=/nonexistent/cert.pem"], {}, "/nonexistent/"),
    ([], {"RPC_HOST": "no.such.host.invalid"}, "RPC_HOST"),
    ([], {"DATA_DIR": "/proc/nope"}, "DATA_DIR"),
], ids=["bogus-option", "log-level", "pool-size-0", "pool-size-abc", "listen-tcp-abc", "listen-garbage",
        "ssl-missing-files", "host-unresolvable", "data-dir"])
def test_a_bad_option_or_setting_is_one_line_and_exit_2(tmp_path, options, env, mentions):
    assert mentions in one_line(run_daemon(tmp_path, *options, **env))


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run_daemon(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1"))
    assert f"port {port}" in line and "in use" in line


@pytest.mark.parametrize("token, cause", [("", "RPC_AUTH_TOKEN is unset"),
                                          ("short-token", "RPC_AUTH_TOKEN is too short (11 characters)"),
                                          ("s" * 31, "RPC_AUTH_TOKEN is too short (31 characters)"),
                                          (PLACEHOLDER_TOKEN, "RPC_AUTH_TOKEN is the example placeholder")])
def test_production_refuses_a_non_loopback_listener_without_a_real_token(tmp_path, token, cause):
    line = one_line(run_daemon(tmp_path, "--listen", "tcp:0", NODE_ENV="production", JWT_SECRET="j" * 48,
                               RPC_AUTH_TOKEN=token, MONGODB_URI="mongodb://127.0.0.1:1/"))
    assert "needs RPC_AUTH_TOKEN, a random token of at least 32 characters" in line and cause in line, line
    assert not token or token not in line


def test_which_listeners_need_a_token():
    def problem(env: str, listen: str, token: str = "") -> str | None:
        settings = load_settings(environ={"NODE_ENV": env, "JWT_SECRET": "j" * 48, "RPC_AUTH_TOKEN": token,
                                          "RPC_LISTEN": listen})
        return check_listen(settings)

    port = free_port()
    assert problem("production", f"tcp:{port}:interface=127.0.0.1") is None
    assert problem("production", f"tcp:{port}:interface=localhost") is None
    assert problem("production", "tcp:0")
    assert problem("production", "tcp:0:interface=0.0.0.0")
    assert problem("staging", "tcp:0")
    assert problem("production", "tcp:0", token="r" * 32) is None
    assert problem("development", "tcp:0") is None
    assert problem("test", "tcp:0") is None


def test_the_server_header_does_not_name_twisted(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        for method, path in (("GET", "/health"), ("GET", "/RPC2"), ("POST", "/RPC2"), ("GET", "/nothing")):
            conn.request(method, path, body=b"" if method == "POST" else None)
            answer = conn.getresponse()
            answer.read()
            assert answer.getheader("Server") == "WorkNet-RPC", (method, path, answer.getheader("Server"))
    finally:
        conn.close()
