"""The router's Prometheus metrics (prometheus_client), served on a port of their own.

Counters and histograms move where the scheduler acts (`RouterMetrics.verified`, `finished`,
...). The gauges are read at scrape time from `Scheduler.stats()`, the same figures the Stats RPC
returns (and the operator copies into the resource's status): no figure is computed twice.

The speculative-decoding counters have vLLM's meanings under `specd_` names:
- `specd_spec_decode_num_drafts_total`: verification steps of a request that had draft tokens;
- `specd_spec_decode_num_draft_tokens_total`: draft tokens verified;
- `specd_spec_decode_num_accepted_tokens_total`: draft tokens accepted;
- `specd_spec_decode_num_accepted_tokens_per_pos_total{position}`: accepted tokens by their
  position in the draft (0 = the first drafted token), so acceptance per position is
  per_pos[i] / num_drafts.
Every series carries the labels service, pool, policy and speculation (the configured mode).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from specd.proto.v1 import serving_pb2

LABELS = ("service", "pool", "policy", "speculation")
# seconds; TTFT and end-to-end latency of interactive serving span milliseconds to minutes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class RouterMetrics:
    def __init__(self, service: str, policy: str, speculation: str, stats: Callable[[], serving_pb2.RouterStats],
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.label_values = {"service": service, "pool": "target", "policy": policy, "speculation": speculation}

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, LABELS + extra, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=self.registry)

        self._drafts = counter("specd_spec_decode_num_drafts", "Verification steps of a request with draft tokens.")
        self._draft_tokens = counter("specd_spec_decode_num_draft_tokens", "Draft tokens verified.")
        self._accepted = counter("specd_spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self._accepted_per_pos = counter("specd_spec_decode_num_accepted_tokens_per_pos",
                                         "Accepted draft tokens by position in the draft (0: the first).",
                                         ("position",))
        self._generated = counter("specd_generation_tokens", "Tokens streamed to clients.")
        self._prompt = counter("specd_prompt_tokens", "Prompt tokens of admitted requests.")
        self._finished = counter("specd_request_success", "Finished requests by finish reason.", ("finished_reason",))
        self._failed = counter("specd_request_failures", "Requests that ended with an error, by gRPC status.",
                               ("code",))
        self._preemptions = counter("specd_num_preemptions", "Requests evicted from a full KV cache "
                                                             "(recomputed when they run again).")
        self._failovers = counter("specd_failovers", "Requests moved to another target worker after theirs failed.")
        self._ttft = histogram("specd_time_to_first_token_seconds", "Time from arrival to the first token.",
                               LATENCY_BUCKETS)
        self._tpot = histogram("specd_time_per_output_token_seconds",
                               "(end-to-end - TTFT) / (output tokens - 1), per request.", PER_TOKEN_BUCKETS)
        self._e2e = histogram("specd_e2e_request_latency_seconds", "Time from arrival to the last token.",
                              LATENCY_BUCKETS)
        self._queue = histogram("specd_request_queue_time_seconds", "Time from arrival to the first iteration.",
                                LATENCY_BUCKETS)
        self.registry.register(_StatsCollector(stats, self.label_values))

    def _of(self, metric, **extra: str):
        return metric.labels(**self.label_values, **extra)

    def admitted(self, prompt_tokens: int) -> None:
        self._of(self._prompt).inc(prompt_tokens)

    def verified(self, drafted: int, accepted: int) -> None:
        """One request's verification step: `drafted` draft tokens, `accepted` of them."""
        if drafted:
            self._of(self._drafts).inc()
            self._of(self._draft_tokens).inc(drafted)
            self._of(self._accepted).inc(accepted)
            for position in range(accepted):
                self._of(self._accepted_per_pos, position=str(position)).inc()

    def streamed(self, tokens: int) -> None:
        self._of(self._generated).inc(tokens)

    def finished(self, reason: str, arrival: float, first_scheduled: float | None, first_token: float | None,
                 finished_at: float, output_tokens: int) -> None:
        self._of(self._finished, finished_reason=reason).inc()
        self._of(self._e2e).observe(finished_at - arrival)
        if first_scheduled is not None:
            self._of(self._queue).observe(first_scheduled - arrival)
        if first_token is not None:
            self._of(self._ttft).observe(first_token - arrival)
            if output_tokens > 1:
                self._of(self._tpot).observe((finished_at - first_token) / (output_tokens - 1))

    def failed(self, code: str) -> None:
        self._of(self._failed, code=code).inc()

    def preempted(self) -> None:
        self._of(self._preemptions).inc()

    def failed_over(self) -> None:
        self._of(self._failovers).inc()


class _StatsCollector:
    """Gauges read from the scheduler's live figures when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], serving_pb2.RouterStats], label_values: dict[str, str]) -> None:
        self.stats = stats
        self.label_values = label_values

    def describe(self):
        return []  # collected at scrape time only (the registry does not call collect on register)

    def collect(self):
        s = self.stats()
        values = [self.label_values[name] for name in LABELS]
        for name, doc, value in (
            ("specd_num_requests_waiting", "Admitted requests not in an iteration now.", s.queued_requests),
            ("specd_num_requests_running", "Requests inside an iteration now.", s.running_requests),
            ("specd_speculation_k", "Speculation length of the latest batches.", s.current_k),
            ("specd_acceptance_rate", "Token acceptance estimate (EMA; 0 before any draft was verified).",
             s.acceptance_rate),
            ("specd_goodput_tokens_per_second", "Tokens streamed to clients per second, last minute.",
             s.goodput_tokens_per_s),
            ("specd_speculating_fraction", "Share of request-iterations that drafted (k > 0), last minute.",
             s.speculating_fraction),
            ("specd_drafted_tokens_per_second", "Draft tokens verified per second, last minute.",
             s.drafted_tokens_per_s),
            ("specd_draft_busy_fraction", "Mean share of the time a live draft worker spent drafting, last minute.",
             s.draft_busy_fraction),
            ("specd_mean_time_to_first_token_seconds", "Mean time to first token, last minute.", s.mean_ttft_s),
            ("specd_mean_time_per_output_token_seconds",
             "Mean time per output token after the first, requests finished in the last minute.", s.mean_tpot_s),
            ("specd_live_target_workers", "Target workers answering.", s.live_targets),
            ("specd_live_draft_workers", "Draft workers answering.", s.live_drafts),
        ):
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            family.add_metric(values, value)
            yield family
