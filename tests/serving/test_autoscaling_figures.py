"""The router's last-minute figures that the operator's autoscaling decides on, over real gRPC
servers: each is checked against what the clients themselves measured."""

from __future__ import annotations

import statistics
import time

import grpc
import pytest
from serving_support import PROMPTS

from specd.client import Client
from specd.proto.v1 import serving_pb2, serving_pb2_grpc
from specd.router.config import RouterConfig


def _stats(address: str) -> serving_pb2.RouterStats:
    with grpc.insecure_channel(address) as channel:
        return serving_pb2_grpc.SpecdStub(channel).Stats(serving_pb2.RouterStatsRequest(), timeout=10)


@pytest.mark.parametrize("speculation", ["fixed:4", "none"])
def test_stats_carry_the_last_minutes_figures(workers, start_router, speculation):
    started = time.monotonic()
    config = RouterConfig(policy="fcfs", max_batch_size=4).with_speculation(speculation)
    address = start_router(config, [workers.addresses["target"]], [workers.addresses["draft"]])
    fresh = _stats(address)
    assert (fresh.speculating_fraction, fresh.mean_ttft_s, fresh.mean_tpot_s) == (0.0, 0.0, 0.0)
    generating = time.monotonic()
    with Client(address) as client:
        results = [client.generate(p, 12, ignore_eos=True) for p in PROMPTS[:3]]
    stats = _stats(address)
    elapsed, generated = time.monotonic() - started, time.monotonic() - generating

    # TTFT and TPOT: the router's means are the means of what each request's own timing says
    assert stats.mean_ttft_s == pytest.approx(statistics.fmean(r.timing.ttft_seconds for r in results), rel=1e-6)
    tpot = [(r.timing.total_seconds - r.timing.ttft_seconds) / (r.usage.generated_tokens - 1) for r in results]
    assert stats.mean_tpot_s == pytest.approx(statistics.fmean(tpot), rel=1e-6)
    proposed = sum(r.usage.draft_tokens_proposed for r in results)
    if speculation == "none":  # the control: nothing drafted, no draft replica busy
        assert proposed == 0
        assert stats.speculating_fraction == stats.drafted_tokens_per_s == stats.draft_busy_fraction == 0.0
        return
    # k = 4 but where fewer tokens remain: most request-iterations drafted
    iterations = sum(r.usage.iterations for r in results)
    assert 0.5 < stats.speculating_fraction <= 1.0
    assert stats.speculating_fraction * iterations == pytest.approx(round(stats.speculating_fraction * iterations))
    # tokens per second over the router's life so far (younger than the one-minute window), which is
    # longer than the generations and shorter than the test
    assert proposed / elapsed <= stats.drafted_tokens_per_s <= proposed / generated
    assert 0.0 < stats.draft_busy_fraction <= 1.0


def test_the_figures_are_prometheus_gauges_of_the_same_values():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from specd.router.metrics import RouterMetrics

    stats = serving_pb2.RouterStats(speculating_fraction=0.25, drafted_tokens_per_s=310.0, draft_busy_fraction=0.5,
                                    mean_ttft_s=1.5, mean_tpot_s=0.02)
    registry = RouterMetrics("s", "fcfs", "goodput", lambda: stats).registry
    values = {s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode())
              for s in f.samples}
    assert {name: values[name] for name in ("specd_speculating_fraction", "specd_drafted_tokens_per_second",
                                            "specd_draft_busy_fraction", "specd_mean_time_to_first_token_seconds",
                                            "specd_mean_time_per_output_token_seconds")} == {
        "specd_speculating_fraction": 0.25, "specd_drafted_tokens_per_second": 310.0,
        "specd_draft_busy_fraction": 0.5, "specd_mean_time_to_first_token_seconds": 1.5,
        "specd_mean_time_per_output_token_seconds": 0.02}
