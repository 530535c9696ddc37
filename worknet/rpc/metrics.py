"""Prometheus metrics of one daemon (its own registry, rendered at ``GET /metrics``).

With ``--workers N`` every worker runs in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the parent) and ``/metrics`` renders the
aggregate of all workers (see :func:`render`); the gauges say how they combine.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "worknet_rpc_requests", "XML-RPC calls by method and outcome (ok, fault, or the error code)",
            ["method", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "worknet_rpc_request_duration_seconds", "XML-RPC call duration by method",
            ["method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.faults = Counter(
            "worknet_rpc_faults", "XML-RPC faults by fault code", ["code"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "worknet_rpc_in_flight_requests", "XML-RPC calls being processed", registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.http_rejected = Counter(
            "worknet_http_rejected", "HTTP requests refused before any call (401, 413)",
            ["status"], registry=self.registry,
        )
        self.http_connections = Gauge(
            "worknet_http_connections", "HTTP connections open now (all workers)", registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.http_dropped = Gauge(
            "worknet_http_connections_dropped", "HTTP connections closed by the daemon so far: over_cap (the "
            "connection cap was reached), too_slow (a request did not arrive whole in time)",
            ["reason"], registry=self.registry, multiprocess_mode="sum",
        )
        self.password_jobs = Gauge(
            "worknet_password_jobs", "bcrypt jobs of the password thread pool so far: run, skipped (too late "
            "to answer in time), refused (queue full)", ["outcome"], registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.db_connected = Gauge(
            "worknet_db_connected", "1 when the database answered the last ping (every worker's pool)", registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.db_pool_size = Gauge(
            "worknet_db_pool_size", "Connections in the txmongo pool (all workers)", registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.db_pool_connected = Gauge(
            "worknet_db_pool_connections_up", "Pool connections currently established (all workers)",
            registry=self.registry, multiprocess_mode="livesum",
        )


def multiprocess_dir() -> str:
    """The shared metrics directory of ``--workers`` (empty for a single process)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def render(metrics: Metrics) -> bytes:
    """The text exposition: this process's registry, or the aggregate of every worker."""
    directory = multiprocess_dir()
    if not directory:
        return generate_latest(metrics.registry)
    from prometheus_client import multiprocess

    aggregate = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregate, path=directory)
    return generate_latest(aggregate)
