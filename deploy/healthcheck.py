"""Exit 0 when the local daemon answers ``GET /health`` with 200, else 1 (Docker HEALTHCHECK).

It reads the daemon's own settings (environment, then ./.env), so it follows
``RPC_PORT`` / ``RPC_HOST`` / ``RPC_LISTEN``: ``tcp:`` is asked over HTTP,
``ssl:`` over HTTPS (the certificate is not checked: this is the daemon
asking itself on loopback), ``unix:`` over its socket.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import sys

TIMEOUT = 4.0


def target(listen: str) -> tuple[str, str, int]:
    """(kind, host or socket path, port) of a Twisted server endpoint string."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", listen)]
    kind, args = parts[0].lower(), parts[1:]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    positional = [a for a in args if "=" not in a]
    if kind == "unix":
        return kind, options.get("address") or positional[0], 0
    port = int(options.get("port") or positional[0])
    host = options.get("interface", "127.0.0.1")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a wildcard listen is asked on loopback
    return kind, host, port


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def main() -> int:
    from worknet.config import load_settings

    try:
        kind, host, port = target(load_settings().listen)
        if kind == "unix":
            connection: http.client.HTTPConnection = _UnixConnection(host)
        elif kind == "ssl":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # noqa: S323 - the daemon's own loopback listener
            connection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        connection.request("GET", "/health")
        status = connection.getresponse().status
    except Exception as e:  # noqa: BLE001 - anything at all means unhealthy
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: /health answered {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
