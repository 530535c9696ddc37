"""The embedded database's launcher: ``python lifeline.py DATA_DIR -- secantusd-py ...``.

It runs in the child process, between the daemon's fork and the database's
exec, and does three things the daemon cannot do from the reactor:

* ``PR_SET_PDEATHSIG``: the kernel sends the database SIGTERM when the daemon
  dies for any reason (``kill -9`` included), so no orphan keeps the data
  directory locked (Linux; elsewhere the daemon's own stop is all there is);
* it starts a session of its own (``setsid``): Ctrl-C in the daemon's
  terminal signals the daemon's process group only, and the daemon stops its
  database itself, in order (a database killed by the same SIGINT would be
  mistaken for a crash);
* it takes an exclusive ``flock`` on ``DATA_DIR/worknet-embedded.lock`` and
  writes there the PID of the daemon (its parent) and its own (the
  database's, after the exec); the lock file stays open across the exec, so
  it is held exactly as long as the database runs.  A second start on the
  same directory fails at once naming the daemon that holds it (exit ``HELD``);
* a database process that holds WiredTiger's own lock without ours (one left
  by an older version) is found through ``/proc`` and named as well.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

HELD = 75  # EX_TEMPFAIL: the data directory is in use by another process
LOCK_NAME = "worknet-embedded.lock"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() == 1:  # the daemon died before the call above: do not outlive it
            raise SystemExit(1)


def holders(path: Path) -> list[int]:
    """PIDs of the processes (other than this one) that have ``path`` open, read from /proc."""
    found = []
    target = str(path)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to look at
            continue
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: lifeline.py DATA_DIR -- PROGRAM [ARG...]\n")
        return 2
    data_dir, command = Path(argv[0]), argv[2:]
    _die_with_parent()
    os.setsid()
    lock = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pids = os.pread(lock, 64, 0).decode("ascii", "replace").split()
        owner = f"process {pids[0]}" if pids else "another process"
        if len(pids) > 1:  # the daemon, then its database
            owner += f" (a worknet-rpc daemon; its database is process {pids[1]})"
        sys.stderr.write(f"DataDirectoryHeld: the data directory {data_dir} is in use by {owner}\n")
        return HELD
    others = holders(data_dir / "WiredTiger.lock")
    if others:
        sys.stderr.write(f"DataDirectoryHeld: the data directory {data_dir} is in use by process {others[0]}\n")
        return HELD
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getppid()} {os.getpid()}\n".encode(), 0)  # the daemon, and the database after the exec
    os.set_inheritable(lock, True)  # held by the database itself from here on
    os.execv(command[0], command)  # noqa: S606 - the daemon-chosen secantusd-py and its arguments
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
