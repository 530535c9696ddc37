"""Checks run once before the daemon starts, so that a setting it cannot run with is one line, exit 2.

Each returns None when all is well, or a sentence naming the setting and the
cause.  They run while the options are parsed, before twistd daemonises and
before the reactor runs (a little disk and socket work is fine there).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from typing import Any

from twisted.internet import endpoints

from worknet.config import Settings

PLACEHOLDER_TOKEN = "change-me-to-a-long-random-token"  # noqa: S105 - deploy/env.example's placeholder, refused
MIN_AUTH_TOKEN = 32


def _listen_setting(settings: Settings) -> str:
    return "RPC_LISTEN (--listen)" if settings.rpc_listen else "RPC_HOST/RPC_PORT"


def _is_loopback(interface: str) -> bool:
    if interface in ("", "0.0.0.0", "::"):  # noqa: S104 - the point: every interface is not loopback
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:  # a host name: loopback only if every address it resolves to is
        try:
            infos = socket.getaddrinfo(interface, None)
        except OSError:
            return False
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_listen(settings: Settings) -> str | None:
    """The listen address parses, its files exist, its host resolves, its port is free, and it is
    either loopback or protected by a token (outside development and test)."""
    where = _listen_setting(settings)
    try:
        endpoint: Any = endpoints.serverFromString(None, settings.listen)
    except OSError as e:  # an ssl: endpoint's key or certificate file
        return f"{where}: cannot read {e.filename or 'a TLS file'}: {e.strerror or e}"
    except Exception as e:  # ValueError, TypeError, KeyError...: the string itself
        return f"{where}: {settings.listen!r} is not a valid endpoint ({e})"
    port, interface = getattr(endpoint, "_port", None), getattr(endpoint, "_interface", None)
    if port is None or interface is None:  # unix: sockets and other local endpoints
        return None
    if interface:
        try:
            socket.getaddrinfo(interface, port, type=socket.SOCK_STREAM)
        except OSError:
            return f"{where}: cannot resolve the host {interface!r}"
    if port:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((interface, port))
            except OSError as e:
                return f"{where}: cannot listen on port {port} of {interface or 'every interface'}: {e.strerror}"
    if settings.node_env not in ("development", "test") and not _is_loopback(interface):
        token = settings.rpc_auth_token
        if not token:
            why = "RPC_AUTH_TOKEN is unset"
        elif token == PLACEHOLDER_TOKEN:
            why = "RPC_AUTH_TOKEN is the example placeholder"
        elif len(token) < MIN_AUTH_TOKEN:
            why = f"RPC_AUTH_TOKEN is too short ({len(token)} characters)"
        else:
            return None
        return (f"{where}: listening on {interface or 'every interface'} (not loopback) needs RPC_AUTH_TOKEN, "
                f"a random token of at least {MIN_AUTH_TOKEN} characters: {why} "
                "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)")
    return None


def check_data_dir(path: str) -> str | None:
    """The embedded database's directory exists (or can be made) and is writable."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"DATA_DIR: cannot create {path}: {e.strerror}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"DATA_DIR: {path} is not writable"
    return None


def metrics_parent(data_dir: str) -> str | None:
    """Where ``--workers`` makes its private metrics directory (prometheus_client's multiprocess files).

    The system's temporary directory as Python finds it (``TMPDIR``, ``/tmp``,
    ``/var/tmp``, ``/usr/tmp``, the working directory), else ``DATA_DIR``
    (made if needed): on a read-only root (``docker run --read-only``) that is
    the volume the daemon writes to anyway.  None when neither is writable.
    A directory counts only once a directory could really be made in it.
    """
    try:
        return tempfile.gettempdir()  # it tries each candidate with a real file
    except FileNotFoundError:  # "No usable temporary directory"
        pass
    try:
        os.makedirs(data_dir, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix="worknet-probe-", dir=data_dir))
    except OSError:
        return None
    return data_dir


def check_metrics_dir(settings: Settings) -> str | None:
    """With more than one worker, a writable directory for their shared metrics exists."""
    if settings.rpc_workers <= 1 or metrics_parent(settings.data_dir) is not None:
        return None
    return (f"RPC_WORKERS (--workers) {settings.rpc_workers}: the workers' metrics need a writable directory, "
            f"and neither a temporary directory (TMPDIR, /tmp, /var/tmp, the working directory) nor DATA_DIR "
            f"{settings.data_dir} is writable: set TMPDIR or DATA_DIR to a writable directory "
            "(with docker run --read-only: --tmpfs /tmp, or a volume for DATA_DIR)")


def unreachable(host: str, port: int, kind: str, timeout: float) -> str:
    """The words for a database host that cannot be reached: ``kind`` is ``dns``, ``refused`` or ``timeout``
    (one wording for --check-config and the daemon's log)."""
    if kind == "dns":
        return f"the host name {host} does not resolve"
    if kind == "refused":
        return f"connection refused: nothing listens on {host}:{port}"
    return f"no answer from {host}:{port} within {timeout:g} s"


def why_unreachable(hosts: list[tuple[str, int]], timeout: float) -> str:
    """Why no database host answered --check-config's ping: each host's name lookup, then a TCP connection
    (blocking: it runs before the reactor).  A host that accepts connections but did not answer as a
    database in time is "not reachable within" the timeout, as before."""
    causes = []
    for host, port in hosts:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:  # socket.gaierror: no such name (or no DNS)
            causes.append(unreachable(host, port, "dns", timeout))
            continue
        try:
            with socket.create_connection((host, port), timeout=timeout):
                causes.append(f"{host}:{port} accepts connections but answered no ping within {timeout:g} s")
        except ConnectionRefusedError:
            causes.append(unreachable(host, port, "refused", timeout))
        except OSError:  # TimeoutError, no route to host...
            causes.append(unreachable(host, port, "timeout", timeout))
    return "; ".join(causes) or f"not reachable within {timeout:g} s"
