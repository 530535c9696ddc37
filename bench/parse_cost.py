"""CPU time of parsing one request body (``worknet.rpc.parsing.parse_call``, what the reactor thread spends
before any method runs): bodies cheap to send and costly to parse, next to the largest legitimate batches.

``--max-values`` sets the limit (default: RPC_MAX_VALUES' default); a limit above every body's count shows what
parsing them whole costs.  CPU time of this process (``time.process_time``), best and median of ``--repeat``.

    .venv/bin/python -m bench.parse_cost
    .venv/bin/python -m bench.parse_cost --max-values 1000000000
"""

from __future__ import annotations

import argparse
import statistics
import time
import xmlrpc.client

from worknet.rpc.parsing import MAX_VALUES, BadValue, NotAnXmlRpcCall, NotWellFormed, parse_call

MIB = 1024 * 1024
HEAD = b"<?xml version='1.0'?><methodCall><methodName>ping</methodName><params><param><value>"
TAIL = b"</value></param></params></methodCall>"


def one_mib(head: bytes, unit: bytes, tail: bytes) -> bytes:
    return head + unit * ((MIB - len(head) - len(tail)) // len(unit)) + tail


def gig_batch(calls: int, full: bool) -> bytes:
    """A system.multicall of ``calls`` gigsService.create: typical fields, or every list full."""
    gig: dict = {"title": "Logo design in a day", "description": "Professional work: logo, icons.",
                 "category": "web-design", "price": "19.99", "deliveryTime": 3, "tags": ["logo", "icon", "brand"]}
    if full:
        gig.update(title="t" * 80, description="d" * 200, revisionNumber=2, images=["https://example.com/a.png"] * 10,
                   features=["feature"] * 20, tags=["tag"] * 10)
    return xmlrpc.client.dumps(([{"methodName": "gigsService.create", "params": ["0" * 24, gig]}] * calls,),
                               "system.multicall").encode()


def bodies() -> dict[str, bytes]:
    return {
        "1 MiB of empty values": one_mib(HEAD + b"<array><data>", b"<value/>", b"</data></array>" + TAIL),
        "1 MiB struct of empty members": one_mib(HEAD + b"<struct>", b"<member><name/><value/></member>",
                                                 b"</struct>" + TAIL),
        "1 MiB of <param/>": one_mib(b"<methodCall><methodName>ping</methodName><params>", b"<param/>",
                                     b"</params></methodCall>"),
        "1 MiB of <nil/> in one value": one_mib(HEAD, b"<nil/>", TAIL),
        "1 MiB struct of empty arrays": one_mib(HEAD + b"<struct>",
                                                b"<member><name/><value><array><data/></array></value></member>",
                                                b"</struct>" + TAIL),
        "multicall of 1,000 ping": xmlrpc.client.dumps(([{"methodName": "ping", "params": []}] * 1000,),
                                                       "system.multicall").encode(),
        "multicall of 250 typical creates": gig_batch(250, full=False),
        "multicall of 180 full creates": gig_batch(180, full=True),
        "multicall of 250 full creates": gig_batch(250, full=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-values", type=int, default=MAX_VALUES)
    parser.add_argument("--repeat", type=int, default=9)
    options = parser.parse_args()
    print(f"max_values={options.max_values}")
    for name, body in bodies().items():
        times = []
        outcome = "parsed"
        for _ in range(options.repeat):
            started = time.process_time()
            try:
                parse_call(body, options.max_values)
            except (NotWellFormed, NotAnXmlRpcCall, BadValue) as e:
                outcome = str(e)[:60]
            times.append(time.process_time() - started)
        print(f"{name:34s} {len(body):>9,} bytes {body.count(b'<value'):>7,} values   CPU best "
              f"{min(times) * 1000:6.1f} ms median {statistics.median(times) * 1000:6.1f} ms   {outcome}")


if __name__ == "__main__":
    main()
