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

from collections.abc import Callable
from typing import Protocol

from specd.router.config import QueueSettings
from specd.router.request import Request

# request -> (seconds of one draft pass, seconds of one target pass) for an iteration of it alone
StepCosts = Callable[[Request], tuple[float, float]]
# () -> (global acceptance estimate, typical speculation length): stands in for unknown requests
Population = Callable[[], tuple[float, int]]


class Policy(Protocol):
    name: str

    def order(self, requests: list[Request]) -> list[Request]: ...


class FCFS:
    name = "fcfs"

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=lambda r: r.arrival)


class LAS:
    name = "las"

    def __init__(self, queues: QueueSettings) -> None:
        self.queues = queues

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=lambda r: (self.queues.level(r.iterations), r.arrival))


class SJF:
    name = "sjf"

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=lambda r: (r.predicted_length, r.arrival))


class LAPSSD:
    name = "laps-sd"

    def __init__(self, queues: QueueSettings, costs: StepCosts, population: Population) -> None:
        self.queues = queues
        self.costs = costs
        self.population = population

    def perceptible(self, r: Request) -> bool:
        return r.is_stable(self.queues.stability_window, self.queues.stability_threshold)

    def remaining_time(self, r: Request) -> float:
        if self.perceptible(r):
            alpha, n = r.acceptance.value, r.last_k
        else:
            alpha, n = self.population()
        t_draft, t_target = self.costs(r)
        remaining = max(r.predicted_length - r.generated, 1.0)
        return remaining * (n * t_draft + t_target) / (n * alpha + 1)

    def key(self, r: Request) -> tuple:
        return self.queues.level(r.iterations), self.remaining_time(r), r.arrival

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=self.key)


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
