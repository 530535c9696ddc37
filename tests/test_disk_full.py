"""The embedded database's disk fills up, then space comes back: the daemon says so and recovers by itself.

``DATA_DIR`` is a 40 MB tmpfs (mounting one needs root: the test is skipped,
saying why, where that is not allowed).  So that 40 MB need not go through the
daemon: large documents written straight into the database go into its
journal until it opens a new journal file (its files take their room when
they are opened, ~10 MB) and fill most of that file, then a ballast file
beside the database leaves less than ``DATA_DIR_MIN_FREE_MB`` free, too
little for the next journal file.  Required: a ``/health`` warning while free
space is below ``DATA_DIR_MIN_FREE_MB`` (and none before); then writers send
4.9 KB messages until the database refuses them; once full, ``UNAVAILABLE`` for
every call (reads too, never fault -32603), ``/health`` 503 ``degraded`` with
the cause, and the cause logged once.  Then the tmpfs is grown to 200 MB:
calls succeed again without a restart of the daemon, and every acknowledged
message is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from tests.conftest import wait_for

SIZE_MB = 40
MIN_FREE_MB = 6  # below this /health warns; less than a journal file
JOURNAL_FILE_MB = 10  # the room a journal file of the database takes when it is opened
JOURNAL_DOCUMENTS = 12  # 256 KB documents written into the journal file opened last (~0.5 MB of it each)
WRITERS = 3
MORE_WHILE_FULL = 10  # calls answered (not ok) after the disk was found full, before looking at it
TEXT = ("m" * 99 + " ") * 49  # 4,900 characters
MB = 1024 * 1024


def mount_tmpfs(where: Path, size_mb: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for DATA_DIR needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")


def leave_free(where: Path, mb: int) -> int:
    """Fill ``where`` with a ballast file until ``mb`` MB remain free; the ballast's size in MB."""
    chunk = b"\0" * MB
    written = 0
    with open(where / "ballast", "wb") as ballast:
        while free_mb(where) > mb:
            ballast.write(chunk)
            ballast.flush()
            written += 1
    return written


def fill_the_journal(uri: str, where: Path, floor_mb: float) -> int:
    """Write 256 KB documents into a scratch collection until the free space of ``where`` drops (the database
    opened a new journal file), then ``JOURNAL_DOCUMENTS`` more, never below ``floor_mb`` MB free; the
    documents written."""
    start = free_mb(where)
    more = written = 0
    with pymongo.MongoClient(uri, directConnection=True) as client:
        scratch = client.prefill.scratch
        while more < JOURNAL_DOCUMENTS and free_mb(where) > floor_mb:
            scratch.insert_one({"blob": b"\1" * (MB // 4)})
            written += 1
            more += free_mb(where) < start - 1
    return written


def free_mb(where: Path) -> float:
    found = os.statvfs(where)
    return found.f_bavail * found.f_frsize / MB


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "small"
    mount_tmpfs(where, SIZE_MB)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def test_a_full_disk_is_unavailable_with_its_cause_and_the_daemon_recovers_once_space_is_back(small_disk, make_daemon):
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(small_disk / "db"), DATA_DIR_MIN_FREE_MB=str(MIN_FREE_MB),
                         DB_TIMEOUT_SECONDS="5", BCRYPT_ROUNDS="4")
    daemon.expected_errors = True  # the full disk is logged as an error
    rpc = daemon.proxy()
    a = rpc.usersService.register("filler", "filler@example.com", "password123", "client")["user_id"]
    b = rpc.usersService.register("reader", "reader@example.com", "password123", "client")["user_id"]
    conversation = rpc.messagesService.start_conversation(a, b)["conversation_id"]
    status, body = health(daemon.port)
    assert status == 200 and not body.get("warnings"), body
    found = daemon.embedded_database()
    assert found is not None
    # never below a journal file and some (the database would stop here), then less than one
    journal = fill_the_journal(f"mongodb://127.0.0.1:{found[1]}/", small_disk, JOURNAL_FILE_MB + 2)
    ballast = leave_free(small_disk, MIN_FREE_MB - 3)
    print(f"\n{journal} documents of 256 KB, ballast {ballast} MB: {free_mb(small_disk):.1f} MB free")
    warned: dict = {}

    def warns() -> bool:
        status, body = health(daemon.port)
        if status == 200 and any("low free space" in w for w in body.get("warnings", [])):
            warned.update(body)
        return bool(warned)

    wait_for(warns, 30, "a /health warning of low free space", interval=0.2)
    acknowledged: list[str] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer() -> None:
        proxy = daemon.proxy()
        while not stop.is_set():
            mid = str(ObjectId())
            try:
                answer = proxy.messagesService.create(mid, conversation, a, {"text": TEXT})
                outcome = "ok" if answer["success"] else answer["code"]
            except xmlrpc.client.Fault as fault:
                outcome = f"fault {fault.faultCode}"
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome == "ok":
                    acknowledged.append(mid)
            if outcome != "ok":
                time.sleep(0.2)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        def full() -> bool:
            status, body = health(daemon.port)
            if status == 200 and body.get("warnings"):
                warned.update(body)
            with lock:
                return status == 503 and outcomes.get("UNAVAILABLE", 0) > 0 or any(
                    o.startswith("fault") for o in outcomes)

        wait_for(full, 180, "the disk to fill up", interval=0.5)
        def refused() -> int:
            with lock:
                return sum(n for outcome, n in outcomes.items() if outcome != "ok")

        then = refused()

        def more_calls_while_full() -> bool:
            return refused() >= then + MORE_WHILE_FULL

        wait_for(more_calls_while_full, 60, f"{MORE_WHILE_FULL} more calls answered while full", interval=0.1)
        status, body = health(daemon.port)
        try:
            read = rpc.messagesService.get_unread_count(b)
        except xmlrpc.client.Fault as fault:
            read = {"success": False, "code": f"fault {fault.faultCode}"}
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    print(f"while filling and full: {outcomes}, acknowledged {len(acknowledged)}; /health when full: {status} {body}")
    assert not [o for o in outcomes if o.startswith("fault")], outcomes
    assert any("low free space" in w for w in warned.get("warnings", [])), "no /health warning before the disk was full"
    assert status == 503 and body["status"] == "degraded" and "full" in body["cause"], body
    assert read["success"] is False and read["code"] == "UNAVAILABLE", read
    log = daemon.log()
    assert log.count("cannot use the database: the database cannot write") == 1, "the cause is logged once"

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True, timeout=30)
    grown = time.monotonic()

    def writes_again() -> bool:
        return bool(rpc.messagesService.create(str(ObjectId()), conversation, a, {"text": "back"})["success"])

    wait_for(writes_again, 90, "a write to succeed after space came back", interval=0.5)
    print(f"writes succeed {time.monotonic() - grown:.1f} s after the disk was grown")
    assert health(daemon.port)[0] == 200
    stored: set[str] = set()
    page = 1
    while True:
        got = rpc.messagesService.get_conversation(conversation, page, 100)
        stored |= {m["id"] for m in got["messages"]}
        if page >= got["pages"]:
            break
        page += 1
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged messages are missing"

