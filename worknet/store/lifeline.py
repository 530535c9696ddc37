"""The embedded database's launcher: ``python lifeline.py DATA_DIR -- secantusd-py ...``.

It runs in the child process, between the daemon's fork and the database's
exec, and does three things the daemon cannot do from the reactor:

* ``PR_SET_PDEATHSIG``: the kernel sends the database SIGTERM when the daemon
  dies for any reason (``kill -9`` included), so no orphan keeps the data
  directory locked (Linux; elsewhere the daemon's own stop is all there is);
* it takes an exclusive ``flock`` on ``DATA_DIR/worknet-embedded.lock`` and
  writes its PID there; the lock file stays open across the exec, so it is
  held exactly as long as the database runs.  A second start on the same
  directory fails at once with the PID that holds it (exit ``HELD``);
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
    lock = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(lock, 32, 0).decode("ascii", "replace").strip() or "unknown"
        sys.stderr.write(f"DataDirectoryHeld: the data directory {data_dir} is in use by process {pid}\n")
        return HELD
    others = holders(data_dir / "WiredTiger.lock")
    if others:
        sys.stderr.write(f"DataDirectoryHeld: the data directory {data_dir} is in use by process {others[0]}\n")
        return HELD
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(lock, True)  # held by the database itself from here on
    os.execv(command[0], command)  # noqa: S606 - the daemon-chosen secantusd-py and its arguments
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
