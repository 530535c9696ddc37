"""Login timing: can a wrong password tell which e-mails exist, or which hashes are cheaper?

    .venv/bin/python -m bench.login_timing [--samples 8] [--rounds 12]

Starts a throw-away SecantusDB and one daemon (bcrypt cost ``--rounds``),
seeds ``--samples`` accounts with a hash of that cost and as many with a
bcryptjs-style ``$2a$10$`` hash (the Node backend's default cost), then sends
one wrong-password login to each, and to as many unknown e-mails, one call at
a time (each e-mail is tried once, so no lockout gets in the way). Prints the
median and spread of each kind's answer time; the daemon pads a check against
a cheaper hash to the configured cost, so the three medians should be close.
Loopback only, bounded by the sample count.
"""

from __future__ import annotations

import argparse
import statistics
import time
import xmlrpc.client

import bcrypt
import pymongo

from bench.loadgen import Workspace
from tests.support import user_doc

PASSWORD = "timing password 1"  # noqa: S105 - a throw-away benchmark account


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    samples = max(1, min(args.samples, 50))

    with Workspace("login-timing") as workspace:
        port = workspace.daemon("login_timing", BCRYPT_ROUNDS=str(args.rounds), LOG_LEVEL="WARNING")
        users = pymongo.MongoClient(workspace.uri)["login_timing"].users
        kinds: dict[str, list[str]] = {f"account, cost {args.rounds}": [], "account, bcryptjs cost 10": [],
                                       "unknown e-mail": []}
        for i in range(samples):
            for label, rounds, prefix in ((f"account, cost {args.rounds}", args.rounds, b"2b"),
                                          ("account, bcryptjs cost 10", 10, b"2a")):
                hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds, prefix)).decode()
                name = f"t{rounds}_{i}"
                users.insert_one(user_doc(name, passwordHash=hashed))
                kinds[label].append(f"{name}@example.com")
            kinds["unknown e-mail"].append(f"nobody{i}@example.com")
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        proxy.ping()
        times: dict[str, list[float]] = {label: [] for label in kinds}
        for i in range(samples):  # interleaved, so that load changes hit every kind alike
            for label, emails in kinds.items():
                started = time.perf_counter()
                answer = proxy.usersService.login(emails[i], "wrong password")
                times[label].append((time.perf_counter() - started) * 1000)
                assert answer["code"] == "UNAUTHORIZED", answer
        print(f"wrong-password logins, {samples} per kind, bcrypt cost {args.rounds}")
        print(f"{'kind':<28} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
        for label, values in times.items():
            print(f"{label:<28} {statistics.median(values):>10.0f} {min(values):>8.0f} {max(values):>8.0f}")


if __name__ == "__main__":
    main()
