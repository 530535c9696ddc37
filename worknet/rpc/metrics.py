"""Prometheus metrics of one daemon (its own registry, rendered at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        )
        self.http_rejected = Counter(
            "worknet_http_rejected", "HTTP requests refused before any call (401, 413)",
            ["status"], registry=self.registry,
        )
        self.http_connections = Gauge(
            "worknet_http_connections", "HTTP connections open now", registry=self.registry,
        )
        self.http_dropped = Gauge(
            "worknet_http_connections_dropped", "HTTP connections closed by the daemon so far: over_cap (the "
            "connection cap was reached), too_slow (a request did not arrive whole in time)",
            ["reason"], registry=self.registry,
        )
        self.password_jobs = Gauge(
            "worknet_password_jobs", "bcrypt jobs of the password thread pool so far: run, skipped (too late "
            "to answer in time), refused (queue full)", ["outcome"], registry=self.registry,
        )
        self.db_connected = Gauge(
            "worknet_db_connected", "1 when the database answered the last ping", registry=self.registry,
        )
        self.db_pool_size = Gauge(
            "worknet_db_pool_size", "Connections in the txmongo pool", registry=self.registry,
        )
        self.db_pool_connected = Gauge(
            "worknet_db_pool_connections_up", "Pool connections currently established", registry=self.registry,
        )
