"""Prometheus metrics of the ingress (text exposition at GET /metrics).

Each ingress replica keeps its own registry; scrape every replica (or run one ingress).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
disable_created_metrics()


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ils_requests", "HTTP requests to /v1/segment by status code", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "ils_request_latency_seconds", "end-to-end latency of /v1/segment", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ils_batch_size", "model batch size seen by each answered request", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "ils_answers", "answered requests by whether the raw generation agreed with the presence decision "
            "(unknown: instruction off-template)", ["raw_agreed"], registry=self.registry,
        )
        self.agreement = Gauge(
            "ils_raw_answer_agreement_ratio", "share of answered requests whose raw generation agreed with the "
            "presence decision (the served answer always agrees)", registry=self.registry,
        )
        self._agreed = {True: 0, False: 0}
        self.inflight = Gauge("ils_inflight_requests", "requests in flight in this ingress", registry=self.registry)

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)

    def observe_answer(self, agreed: bool | None) -> None:
        """Count one answer by whether its raw generation agreed; update the agreement ratio."""
        self.answers.labels(raw_agreed="unknown" if agreed is None else str(bool(agreed)).lower()).inc()
        if agreed is not None:
            self._agreed[bool(agreed)] += 1
            self.agreement.set(self._agreed[True] / (self._agreed[True] + self._agreed[False]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
