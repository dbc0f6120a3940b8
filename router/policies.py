"""Scheduling policies: which waiting requests run in the next iteration, and which are preempted.

Every policy orders the requests that are not in flight; the scheduler takes the first
`max_batch_size`. The order is recomputed at every iteration boundary, so a request that falls
out of the first places is preempted (its KV cache stays on its workers).

- fcfs: arrival order.
- las: multi-level feedback queues on attained service (target iterations), arrival order inside
  a queue; blind to acceptance (FastServe-style).
- sjf: shortest predicted output length first.
- laps-sd (Li, Chen, Li 2025): the queues of `las`; inside a queue, shortest estimated remaining
  time first, T = L_rem * (n*T_draft + T_target) / (n*A + 1). A request whose acceptance estimate
  has become stable ("perceptible") uses its own A; until then its acceptance is unknown and
  the population's (the global estimate) stands in, with the current typical k as n.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from specd.router.config import QueueSettings
from specd.router.request import Request

# speculation length k -> (seconds of one draft pass, seconds of one target pass) for one request alone
StepCosts = Callable[[int], tuple[float, float]]
# () -> (global acceptance estimate, typical speculation length): stands in for unknown requests
Population = Callable[[], tuple[float, int]]
SortKey = Callable[[Request], Any]


class Policy:
    """An order of the waiting requests, as a sort key made once per decision (a key may read
    figures that change between decisions, such as step costs: they are read once, not per request)."""

    name: str

    def sort_key(self) -> SortKey:
        raise NotImplementedError

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=self.sort_key())

    def first(self, requests: list[Request], n: int) -> list[Request]:
        """The first n of `order(requests)`, in O(len * log n)."""
        if n >= len(requests):
            return self.order(requests)
        return heapq.nsmallest(n, requests, key=self.sort_key())


class FCFS(Policy):
    name = "fcfs"

    def sort_key(self) -> SortKey:
        return lambda r: r.arrival


class LAS(Policy):
    name = "las"

    def __init__(self, queues: QueueSettings) -> None:
        self.queues = queues

    def sort_key(self) -> SortKey:
        level = self.queues.level
        return lambda r: (level(r.iterations), r.arrival)


class SJF(Policy):
    name = "sjf"

    def sort_key(self) -> SortKey:
        return lambda r: (r.predicted_length, r.arrival)


class LAPSSD(Policy):
    name = "laps-sd"

    def __init__(self, queues: QueueSettings, costs: StepCosts, population: Population) -> None:
        self.queues = queues
        self.costs = costs
        self.population = population

    def perceptible(self, r: Request) -> bool:
        return r.is_stable(self.queues.stability_window, self.queues.stability_threshold)

    def remaining_time(self, r: Request) -> float:
        return self._estimator()(r)

    def _estimator(self) -> Callable[[Request], float]:
        """T = L_rem * (n*T_draft + T_target) / (n*A + 1), with this decision's population and costs."""
        population = self.population()
        costs: dict[int, tuple[float, float]] = {}

        def remaining_time(r: Request) -> float:
            alpha, n = (r.acceptance.value, r.last_k) if self.perceptible(r) else population
            if r.last_k not in costs:
                costs[r.last_k] = self.costs(r.last_k)
            t_draft, t_target = costs[r.last_k]
            remaining = max(r.predicted_length - r.generated, 1.0)
            return remaining * (n * t_draft + t_target) / (n * alpha + 1)

        return remaining_time

    def sort_key(self) -> SortKey:
        level, remaining_time = self.queues.level, self._estimator()
        return lambda r: (level(r.iterations), remaining_time(r), r.arrival)


def make_policy(name: str, queues: QueueSettings, costs: StepCosts,
                population: Population = lambda: (0.7, 0)) -> Policy:
    if name == "fcfs":
        return FCFS()
    if name == "las":
        return LAS(queues)
    if name == "sjf":
        return SJF()
    if name == "laps-sd":
        return LAPSSD(queues, costs, population)
    raise ValueError(f"unknown policy {name!r}")
