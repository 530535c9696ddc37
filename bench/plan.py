"""``make bench``'s servers and scenarios, and a row of its results."""

from __future__ import annotations

from dataclasses import dataclass

from bench import wrk
from bench.loadgen import call_body
from bench.seeding import BCRYPT_ROUNDS, CATEGORIES, PASSWORD

DAEMON_1 = "worknet (1 worker)"
DAEMON_N = "worknet (--workers auto)"
STDLIB_11 = "stdlib threaded, HTTP/1.1"
STDLIB_10 = "stdlib threaded, HTTP/1.0"
STOCK = "stock twisted.web.xmlrpc"
NGINX = "nginx static (ceiling)"
PEERS = (STDLIB_11, STDLIB_10, STOCK)


@dataclass
class Scenario:
    name: str
    title: str
    servers: tuple[str, ...]
    script: str = ""
    note: str = ""


@dataclass
class Row:
    scenario: str
    server: str
    connections: int
    result: wrk.WrkResult
    server_cpu_us: float = float("nan")  # CPU of the server's processes per request (user + system)
    wrk_cpu_us: float = float("nan")  # CPU of the generator per request

    def cpu(self) -> str:
        if self.server_cpu_us != self.server_cpu_us:  # NaN: no answer in the run
            return "–"
        return f"{self.server_cpu_us:,.0f} / {self.wrk_cpu_us:,.0f}"


def scenarios(data: dict, run_tag: str) -> list[Scenario]:
    path = "/RPC2"
    gig_ids = [g for g, _ in data["gigs"]]
    searches = [call_body("gigsService.search", f"{a} {b}", {}, 1, 20)
                for a, b in (("logo", "design"), ("python", "script"), ("video", "editing"), ("seo", "audit"))]
    browses = [call_body("gigsService.search", "", {"category": slug}, 1, 20) for slug in CATEGORIES]
    daemons = (DAEMON_1, DAEMON_N)
    every = daemons + PEERS
    no_stock = daemons + (STDLIB_11, STDLIB_10)
    return [
        Scenario("ping", "ping", every + (NGINX,), wrk.static_script(path, [call_body("ping")]),
                 "nginx answers a static ping body: the generator's ceiling"),
        Scenario("calculate_fees", "paymentsService.calculate_fees(100.0) (no database)", every,
                 wrk.static_script(path, [call_body("paymentsService.calculate_fees", 100.0)])),
        Scenario("get_by_slug", "categoriesService.get_by_slug (one indexed read)", every,
                 wrk.static_script(path, [call_body("categoriesService.get_by_slug", s) for s in CATEGORIES])),
        Scenario("gig_get_by_id", "gigsService.get_by_id (gig + seller)", every,
                 wrk.static_script(path, [call_body("gigsService.get_by_id", g) for g in gig_ids[:500]])),
        Scenario("search", "gigsService.search, two words, page 1", every, wrk.static_script(path, searches)),
        Scenario("browse", "gigsService.search, no words, a category (browse)", every,
                 wrk.static_script(path, browses)),
        Scenario("write_flow", "ordersService.create + paymentsService.create + process (one request = one step)",
                 no_stock, wrk.write_flow_script(path, data["buyers"], data["gigs"][:50], run_tag),
                 "stock twisted peer not built for writes"),
        Scenario("login", f"usersService.login (bcrypt cost {BCRYPT_ROUNDS}), the login storm", no_stock,
                 wrk.static_script(path, [call_body("usersService.login", e, PASSWORD) for e in data["emails"][:64]]),
                 "bound: cores / one bcrypt check"),
    ]

