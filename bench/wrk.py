"""Load with ``wrk`` (Debian's package): Lua scripts for the XML-RPC bodies, and its figures parsed.

``wrk`` is a C load generator (one epoll loop per thread, HTTP/1.1
keep-alive); on this kind of machine it drives nginx's static answer at well
over 10 times what any Python server answers, so the servers, not the
generator, set every figure.  The benchmark shows that in each run with an
nginx ceiling row driven by the same kind of script.

Each script checks every answer: a non-2xx status is counted by wrk itself,
an XML-RPC fault or a ``<success>false`` envelope by the script (``faults``);
both are reported as errors.  The ``done`` hook prints one JSON line that
:func:`run` parses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

WRK_MISSING = "wrk is not installed: apt-get update && apt-get install -y wrk nginx-light"


def find_wrk() -> str | None:
    return shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)


def lua_string(data: bytes | str) -> str:
    """A Lua long-bracket literal that cannot be closed by ``data``."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


# The answer check shared by every script.  ``faults`` counts XML-RPC faults and
# {"success": false} envelopes; ``done`` reports them with wrk's own figures.
_COMMON = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

faults = 0
bad_answer = nil

local function failed(body)
  if body == nil then return false end
  if string.find(body, "<fault>", 1, true) then return true end
  if string.find(body, "<name>success</name>%s*<value><boolean>0") then return true end
  return false
end

function check(status, body)
  if status ~= 200 then return end  -- wrk counts non-2xx itself
  if failed(body) then
    faults = faults + 1
    if bad_answer == nil then bad_answer = string.sub(body, 1, 600) end
  end
end

function done(summary, latency, requests)
  local total_faults = 0
  local sample = ""
  for _, t in ipairs(threads) do
    total_faults = total_faults + (t:get("faults") or 0)
    local b = t:get("bad_answer")
    if b ~= nil and sample == "" then sample = b end
  end
  sample = string.gsub(sample, '[%c"\\]', " ")
  io.write(string.format(
    '\nWRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "faults": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "sample": "%s"}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, total_faults,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, sample))
end
"""


def static_script(path: str, bodies: list[bytes], headers: dict[str, str] | None = None) -> str:
    """A script that sends ``bodies`` round-robin (each one preformatted once).

    One body: wrk's static request (no Lua call per request; the generator then drives
    nginx ~17% faster, measured), the answer still checked by ``response``."""
    if len(bodies) == 1:
        extra = "".join(f'wrk.headers[{lua_string(k)}] = {lua_string(v)}\n' for k, v in (headers or {}).items())
        return _COMMON + f"""
wrk.method = "POST"
wrk.path = {lua_string(path)}
wrk.body = {lua_string(bodies[0])}
wrk.headers["Content-Type"] = "text/xml"
{extra}
function response(status, headers, body)
  check(status, body)
end
"""
    header_lines = "".join(f'  h[{lua_string(k)}] = {lua_string(v)}\n' for k, v in (headers or {}).items())
    items = ",\n".join(lua_string(b) for b in bodies)
    return _COMMON + f"""
local bodies = {{
{items}
}}
local prepared = {{}}
local n = 0

function init(args)
  local h = {{}}
  h["Content-Type"] = "text/xml"
{header_lines}  for i, b in ipairs(bodies) do
    prepared[i] = wrk.format("POST", {lua_string(path)}, h, b)
  end
end

function request()
  n = n + 1
  return prepared[(n % #prepared) + 1]
end

function response(status, headers, body)
  check(status, body)
end
"""


def write_flow_script(path: str, buyers: list[str], gigs: list[tuple[str, str]], run_tag: str) -> str:
    """Order create -> payment create -> payment process, with unique payment ids.

    One Lua state per wrk thread serves all its connections, and an answer does
    not say which request it answers -- so the script reads the step from the
    answer itself: an answer with ``order_id`` and no ``payment_id`` is a
    placed order (queue its payment), one whose payment is ``pending`` is a
    created payment (queue its processing), one with ``order_status`` ends a
    flow.  ``request`` serves the queues first, else places a new order
    (the gig changes with every order and the buyer every ``len(gigs)`` orders, so
    concurrent orders touch different gigs and a buyer-gig pair repeats only
    after ``len(gigs) * len(buyers)`` orders).
    ``flows`` counts finished flows.  Gigs are ``(id, price)`` pairs.
    """
    buyer_items = ", ".join(lua_string(b) for b in buyers)
    gig_items = ", ".join(f"{{{lua_string(g)}, {lua_string(p)}}}" for g, p in gigs)
    return _COMMON.replace('local total_faults = 0', 'local total_faults = 0\n  local total_flows = 0') \
        .replace('total_faults = total_faults + (t:get("faults") or 0)',
                 'total_faults = total_faults + (t:get("faults") or 0)\n'
                 '    total_flows = total_flows + (t:get("flows") or 0)') \
        .replace('"max_us": %d, "sample": "%s"}\\n\',', '"max_us": %d, "sample": "%s", "flows": %d}\\n\',') \
        .replace("latency.max, sample))", "latency.max, sample, total_flows))") + f"""
local buyers = {{ {buyer_items} }}
local gigs = {{ {gig_items} }}
local headers = {{}}
headers["Content-Type"] = "text/xml"
local n = 0
local serial = 0
local to_pay = {{}}
local to_process = {{}}
flows = 0
local tag = {lua_string(run_tag)}

local function call(method, params)
  local body = "<?xml version='1.0'?><methodCall><methodName>" .. method ..
    "</methodName><params>" .. params .. "</params></methodCall>"
  return wrk.format("POST", {lua_string(path)}, headers, body)
end

local function str(s) return "<param><value><string>" .. s .. "</string></value></param>" end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))  -- every run its own ids
  serial = math.random(0, 2147483647)
end

function request()
  if #to_process > 0 then
    local pid = table.remove(to_process)
    return call("paymentsService.process", str(pid) .. str("completed"))
  end
  if #to_pay > 0 then
    local item = table.remove(to_pay)
    serial = serial + 1
    local pid = string.format("%s%08x%09x", tag, serial, n)  -- 24 hex digits: an id the daemon accepts
    return call("paymentsService.create", str(pid) .. str(item[1]) ..
      "<param><value><double>" .. item[2] .. "</double></value></param>" .. str("stripe"))
  end
  n = n + 1
  local gig = gigs[(n % #gigs) + 1]
  local buyer = buyers[(math.floor(n / #gigs) % #buyers) + 1]
  return call("ordersService.create", str(gig[1]) .. str(buyer) ..
    "<param><value><int>1</int></value></param>" ..
    "<param><value><double>" .. gig[2] .. "</double></value></param>")
end

function response(status, headers, body)
  check(status, body)
  if status ~= 200 or body == nil then return end
  if string.find(body, "<name>order_status</name>", 1, true) then
    flows = flows + 1
    return
  end
  local pid = string.match(body, "<name>payment_id</name>%s*<value><string>([^<]+)</string>")
  if pid ~= nil then
    table.insert(to_process, pid)
    return
  end
  local oid = string.match(body, "<name>order_id</name>%s*<value><string>([^<]+)</string>")
  local total = string.match(body, "<name>totalPrice</name>%s*<value><double>([^<]+)</double>")
  if oid ~= nil and total ~= nil then
    table.insert(to_pay, {{oid, total}})
  end
end
"""


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    faults: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    flows: int = 0
    sample: str = ""
    skipped: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run(port: int, script: str, connections: int, seconds: float, path: str = "/RPC2",
        timeout_s: float = 10.0, threads: int = 1) -> WrkResult:
    """``wrk -t{threads} -c{connections} -d{seconds}s`` on a loopback port with ``script``."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError(WRK_MISSING)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        script_path = f.name
    try:
        done = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s:g}s",
             "-s", script_path, f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False,
        )
    finally:
        Path(script_path).unlink(missing_ok=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk said nothing usable (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    figures = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=figures["requests"], seconds=figures["duration_us"] / 1e6, errors=errors,
        faults=figures["faults"], p50_ms=figures["p50_us"] / 1000, p99_ms=figures["p99_us"] / 1000,
        flows=figures.get("flows", 0), sample=figures.get("sample", ""),
    )
