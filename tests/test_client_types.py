"""The SDK's result types: "acceptance rate" means α only (docs/metrics.md)."""

import pytest

from specd.client.types import Usage


def test_accepted_fraction_of_proposed_and_the_deprecated_name():
    usage = Usage(prompt_tokens=3, generated_tokens=10, draft_tokens_proposed=8, draft_tokens_accepted=6,
                  iterations=4)
    assert usage.accepted_fraction_of_proposed == 0.75
    with pytest.warns(DeprecationWarning, match="accepted_fraction_of_proposed"):
        assert usage.acceptance_rate == 0.75
    assert Usage(1, 1, 0, 0, 1).accepted_fraction_of_proposed == 0.0


def test_router_stats_carries_every_figure_of_the_message():
    from specd.client.types import router_stats
    from specd.proto.v1 import serving_pb2

    msg = serving_pb2.RouterStats(acceptance_rate=0.7, drafted_tokens=10, goodput_tokens_per_s=50.0, current_k=3,
                                  queued_requests=2, running_requests=4, finished_requests=9, live_targets=2,
                                  live_drafts=1, policy="laps-sd", speculation="goodput", speculating_fraction=0.8,
                                  drafted_tokens_per_s=120.0, draft_busy_fraction=0.4, mean_ttft_s=0.25,
                                  mean_tpot_s=0.03)
    stats = router_stats(msg)
    assert (stats.speculating_fraction, stats.drafted_tokens_per_s, stats.draft_busy_fraction, stats.mean_ttft_s,
            stats.mean_tpot_s) == (0.8, 120.0, 0.4, 0.25, 0.03)
    assert (stats.acceptance_rate, stats.current_k, stats.live_drafts) == (0.7, 3, 1)
    assert router_stats(serving_pb2.RouterStats()).acceptance_rate is None  # nothing drafted yet
