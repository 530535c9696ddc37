"""Fuzz the real daemon over HTTP: hostile bodies in, only allowed answers out.

``FUZZ_CASES`` (default 2,000, a short run for ``make test``) sets how many
bodies are sent; ``make fuzz`` runs 100,000.  Every answer must be a
well-formed XML-RPC response with an interop fault code (-32700/-32600/
-32601/-32602) or a success envelope, or an HTTP 4xx: no 5xx, no -32603, no
hang, nothing leaked, no error or traceback in the daemon's log; the daemon
is alive afterwards.
"""

from __future__ import annotations

import http.client
import os
import random
import time

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.oracle import LOG_PROBLEMS, Bad, judge, must_fail, refused
from tests.fuzz.strategies import JWT_SECRET, bodies, variant
from worknet.rpc.parsing import parse_call

CASES = int(os.environ.get("FUZZ_CASES", "2000"))
# Each hypothesis example is sent as generated and as VARIANTS cheap random variants (tests.fuzz.strategies.variant).
VARIANTS = 4
PROGRESS_EVERY = 5000
ANSWER_TIMEOUT = 15.0


class Target:
    """One daemon, one kept-alive connection (reopened when the daemon closes it), and its log's tail."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.conn: http.client.HTTPConnection | None = None
        self.log_offset = 0

    def send(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=ANSWER_TIMEOUT)
            try:
                self.conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
                response = self.conn.getresponse()
                payload = response.read()
                if response.will_close:
                    self.close()
                return response.status, payload
            except TimeoutError:
                self.close()
                raise Bad(f"no answer within {ANSWER_TIMEOUT} s") from None
            except (ConnectionError, http.client.HTTPException) as e:
                # a kept-alive connection the daemon closed between two requests: retry once on a new one
                self.close()
                if attempt == 2:
                    raise Bad(f"the connection died without an answer ({type(e).__name__})") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def new_log_problems(self) -> list[str]:
        with open(self.daemon.log_path, "rb") as f:
            f.seek(self.log_offset)
            chunk = f.read()
        self.log_offset += len(chunk)
        return [line for line in chunk.decode("utf-8", "replace").splitlines() if LOG_PROBLEMS.search(line)]


def method_of(body: bytes) -> str | None:
    try:
        return parse_call(body)[0]
    except Exception:
        return None


def test_fuzz_the_daemon(make_daemon):
    daemon = make_daemon(BCRYPT_ROUNDS="4", DB_TIMEOUT_SECONDS="3", JWT_SECRET=JWT_SECRET)
    target = Target(daemon)
    count = {"cases": 0, "4xx": 0, "faults": 0, "envelopes": 0}

    @settings(max_examples=max(1, CASES // (1 + VARIANTS)), deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
              print_blob=True)
    @given(bodies, st.integers(0, 2**32))
    def one_example(generated: bytes, seed: int) -> None:
        rng = random.Random(seed)
        for body in [generated] + [variant(generated, rng) for _ in range(VARIANTS)]:
            count["cases"] += 1
            status, payload = target.send(body)
            try:
                judge(status, payload, method_of(body))
                reason = must_fail(body)
                if reason and not refused(status, payload):
                    raise Bad(f"answered with a result: {reason}")
                problems = target.new_log_problems()
                if problems:
                    raise Bad("the daemon logged:\n" + "\n".join(problems[:10]))
            except Bad as e:
                if not count.get("failed"):  # said at once: shrinking a large body can take many minutes
                    count["failed"] = 1
                    print(f"\nfuzz: first failure after {count['cases']} cases (shrinking it now): {str(e)[:1000]}\n"
                          f"body: {body[:2000]!r}", flush=True)
                raise Bad(f"{e}\nbody: {body[:2000]!r}") from None
            if count["cases"] % PROGRESS_EVERY == 0:
                elapsed = time.perf_counter() - started
                print(f"fuzz: {count['cases']} cases, {elapsed:.0f} s, {count['cases'] / elapsed:.0f} cases/s", flush=True)
            if status != 200:
                count["4xx"] += 1
            elif b"<fault>" in payload[:80]:
                count["faults"] += 1
            else:
                count["envelopes"] += 1

    started = time.perf_counter()
    try:
        one_example()
    finally:
        elapsed = time.perf_counter() - started
        target.close()
        print(f"\nfuzz: {count['cases']} cases in {elapsed:.1f} s = {count['cases'] / elapsed:.0f} cases/s "
              f"(answers: {count['envelopes']} results, {count['faults']} faults, {count['4xx']} HTTP 4xx)")
    assert daemon.proxy().ping()["status"] == "ok"
    assert daemon.process is not None and daemon.process.poll() is None
    assert not target.new_log_problems()
