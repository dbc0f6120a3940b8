"""Goodput speculation in the two-lane pipeline, on the simulator (the router's own decision code).

A lane's drafting is hidden behind the other lane's verify, and a call's round trip holds its wait
behind the other lane's call. The goodput choice models both (speculation.CostModel.timer and its
queue-free overheads); the control counts the waits as overhead, as an average of the round trips
did, and loses against fixed k.
"""

from __future__ import annotations

from specd.router import speculation
from specd.router.config import RouterConfig
from specd.sim.engine import Setup
from specd.sim.experiments import capacity, simulate
from specd.sim.profiles import NAMED
from specd.sim.workloads import MIXES, Workload

PROFILE = NAMED["h100-70b-tp8"]
CONFIG = RouterConfig(policy="fcfs", speculation="goodput", max_batch_size=8, max_queued_requests=10**6)


class Average:
    """The control's overhead: an average of every call's round trip beyond compute, waits included."""

    def __init__(self, window: int) -> None:
        self.value = 0.001

    def add(self, sample: float) -> float:
        self.value = 0.9 * self.value + 0.1 * sample
        return self.value


def test_goodput_is_no_slower_than_the_best_fixed_k(monkeypatch):
    """80% of the capacity without speculation: goodput against fixed k = 5, 6, 7 (6 is this pair's
    best), and the control against the same."""
    workload = Workload(MIXES["paper"], 150, seed=0)
    rate = 0.8 * capacity(Setup(CONFIG.with_speculation("none"), PROFILE), workload)

    def latency(mode: str) -> float:
        return simulate(Setup(CONFIG.with_speculation(mode), PROFILE), workload, rate)["mean_latency_s"]

    fixed = {mode: latency(mode) for mode in ("fixed:5", "fixed:6", "fixed:7")}
    goodput = latency("goodput")
    assert goodput <= min(fixed.values()), (goodput, fixed)
    monkeypatch.setattr(speculation, "WindowedMin", Average)
    control = latency("goodput")
    assert control > 1.02 * min(fixed.values()), (control, fixed)
