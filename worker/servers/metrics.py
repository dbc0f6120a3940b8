"""A worker's Prometheus metrics: KV-cache use and the cost of its model calls, per call kind.

The model thread sets them after each call; prometheus_client's metrics are thread-safe, so a
scrape (on the metrics server's own thread) never touches the runner's state.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specd import contract

LABELS = ("service", "pool")
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


class WorkerMetrics:
    def __init__(self, role: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"service": os.environ.get(contract.SERVICE_ENV, "local"), "pool": role}
        self._kv_usage = Gauge("specd_worker_kv_cache_usage_ratio", "Share of the KV-cache budget in use.",
                               LABELS, registry=self.registry).labels(**labels)
        self._kv_used = Gauge("specd_worker_kv_cache_used_tokens", "Tokens held in KV caches.",
                              LABELS, registry=self.registry).labels(**labels)
        self._kv_budget = Gauge("specd_worker_kv_cache_budget_tokens", "KV-cache budget in tokens.",
                                LABELS, registry=self.registry).labels(**labels)
        self._requests = Gauge("specd_worker_requests", "Requests whose state this worker holds.",
                               LABELS, registry=self.registry).labels(**labels)
        calls = LABELS + ("call",)
        self._passes = Counter("specd_worker_forward_passes", "Forward passes of the model.", calls,
                               registry=self.registry)
        self._tokens = Counter("specd_worker_forward_tokens", "Tokens fed to the model.", calls,
                               registry=self.registry)
        self._seconds = Histogram("specd_worker_call_seconds", "Compute time of one model call.", calls,
                                  buckets=CALL_BUCKETS, registry=self.registry)
        self._labels = labels

    def call(self, kind: str, seconds: float, passes: int, tokens: int) -> None:
        """kind: prefill, propose or verify."""
        self._passes.labels(**self._labels, call=kind).inc(passes)
        self._tokens.labels(**self._labels, call=kind).inc(tokens)
        self._seconds.labels(**self._labels, call=kind).observe(seconds)

    def kv(self, used_tokens: int, budget_tokens: int, requests: int) -> None:
        self._kv_used.set(used_tokens)
        self._kv_budget.set(budget_tokens)
        self._kv_usage.set(used_tokens / budget_tokens if budget_tokens else 0.0)
        self._requests.set(requests)
