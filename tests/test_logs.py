"""The log observers: rendered call lines look like every other line, and lines leave in batches."""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel, LogPublisher, formatEventAsClassicLogText

from worknet import logs


def _event(publisher: LogPublisher, level: LogLevel, text: str, **fields: object) -> dict:
    seen: list[dict] = []
    publisher.addObserver(seen.append)
    log = logs._Logger(namespace="worknet.rpc", observer=publisher)
    log.rendered(level, text, **fields)
    publisher.removeObserver(seen.append)
    return seen[0]


def test_a_rendered_line_is_the_classic_line() -> None:
    """The fast path writes what Twisted's classic formatter writes, braces and request id included."""
    publisher = LogPublisher()
    token = logs.request_id.set("abc-1")
    try:
        event = _event(publisher, LogLevel.info, "gigsService.search {weird} 1.5 ms ok", method="m", ms=1.5)
    finally:
        logs.request_id.reset(token)
    expected = formatEventAsClassicLogText(event, formatTime=logs._clock).replace(
        "[worknet.rpc#info] ", "[worknet.rpc#info] [abc-1] ")
    assert logs.text_line(event) == expected
    assert "{weird}" in expected
    record = json.loads(logs.json_line(event) or "")
    assert record["message"] == "gigsService.search {weird} 1.5 ms ok"
    assert record["request_id"] == "abc-1" and record["duration_ms"] == 1.5


def test_lines_leave_in_batches_and_warnings_at_once() -> None:
    stream = io.StringIO()
    observe = logs.ProcessLog("INFO", logs.text_line, [stream])
    publisher = LogPublisher(observe)
    log = logs._Logger(namespace="worknet.rpc", observer=publisher)
    for n in range(100):
        log.info_rendered(f"call {n}")
    assert stream.getvalue() == ""  # one write per batch: nothing yet
    observe.drain()
    assert stream.getvalue().count("\n") == 100
    log.info_rendered("call 100")
    log.warn("the database does not answer")
    lines = stream.getvalue().splitlines()  # out at once, with the batch before it
    assert lines[-2].endswith("call 100") and lines[-1].endswith("the database does not answer")
    log.info("database ready")
    assert stream.getvalue().rstrip().endswith("database ready")  # not a call line: at once too


def test_request_ids_are_random_and_a_forked_worker_draws_its_own() -> None:
    import os
    import re

    ids = [logs.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert logs.new_request_id("node-backend-42") == "node-backend-42"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: its next ids must not be the parent's next ones
        os.write(write, "".join(logs.new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 100).decode()
    os.close(read)
    assert len(theirs) == 48
    assert theirs != "".join(logs.new_request_id() for _ in range(3))
