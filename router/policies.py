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
from bisect import bisect_left, insort
from collections.abc import Callable, Hashable

from specd.router.config import QueueSettings
from specd.router.request import Request

# speculation length k -> (seconds of one draft pass, seconds of one target pass) for one request alone
StepCosts = Callable[[int], tuple[float, float]]
# () -> (global acceptance estimate, typical speculation length): stands in for unknown requests
Population = Callable[[], tuple[float, int]]
# a bucket of requests: its queue level first, then what its requests' keys share
Bucket = tuple[Hashable, ...]


class Policy:
    """An order of the waiting requests: by (level, scale(bucket) * static_key, arrival).

    A request's bucket and static key do not change while it waits (they change only when it runs);
    the scale of a bucket may change between decisions (LAPS-SD's costs and population figures), and
    is read once per decision. `WaitQueue` keeps each bucket sorted, so that a decision reads only
    the requests it takes instead of sorting every waiting request.
    """

    name: str

    def bucket(self, r: Request) -> Bucket:
        return (0,)

    def static_key(self, r: Request) -> float:
        return 0.0

    def scales(self) -> Callable[[Bucket], float]:
        return lambda bucket: 1.0

    def place(self, r: Request) -> tuple[Bucket, float]:
        """(bucket, static key) of a request that starts waiting."""
        return self.bucket(r), self.static_key(r)

    def order(self, requests: list[Request]) -> list[Request]:
        scale = self.scales()

        def key(r: Request) -> tuple[Hashable, float, float]:
            bucket = self.bucket(r)
            return bucket[0], scale(bucket) * self.static_key(r), r.arrival

        return sorted(requests, key=key)


class FCFS(Policy):
    name = "fcfs"


class LAS(Policy):
    name = "las"

    def __init__(self, queues: QueueSettings) -> None:
        self.queues = queues

    def bucket(self, r: Request) -> Bucket:
        return (self.queues.level(r.iterations),)


class SJF(Policy):
    name = "sjf"

    def static_key(self, r: Request) -> float:
        return r.predicted_length


class LAPSSD(Policy):
    """T = L_rem * (n*T_draft + T_target) / (n*A + 1), split as static key * scale:
    perceptible: (L_rem / (k*A + 1)) * (k*T_draft + T_target(k)), its own A and last k;
    not yet: L_rem * (n*T_draft + T_target(last k)) / (n*A + 1), the population's A and n."""

    name = "laps-sd"

    def __init__(self, queues: QueueSettings, costs: StepCosts, population: Population) -> None:
        self.queues = queues
        self.costs = costs
        self.population = population

    def perceptible(self, r: Request) -> bool:
        return r.is_stable(self.queues.stability_window, self.queues.stability_threshold)

    def bucket(self, r: Request) -> Bucket:
        return self.place(r)[0]

    def static_key(self, r: Request) -> float:
        return self.place(r)[1]

    def place(self, r: Request) -> tuple[Bucket, float]:
        perceptible = self.perceptible(r)  # once: the bucket and the key both depend on it
        remaining = max(r.predicted_length - r.generated, 1.0)
        key = remaining / (r.last_k * r.acceptance.value + 1) if perceptible else remaining
        return (self.queues.level(r.iterations), perceptible, r.last_k), key

    def scales(self) -> Callable[[Bucket], float]:
        alpha, n = self.population()
        cache: dict[Bucket, float] = {}

        def scale(bucket: Bucket) -> float:
            if bucket not in cache:
                _, perceptible, k = bucket
                assert isinstance(k, int)
                t_draft, t_target = self.costs(k)
                cache[bucket] = (k * t_draft + t_target if perceptible
                                 else (n * t_draft + t_target) / (n * alpha + 1))
            return cache[bucket]

        return scale

    def remaining_time(self, r: Request) -> float:
        return self.scales()(self.bucket(r)) * self.static_key(r)


class WaitQueue:
    """The waiting requests of one target replica in `policy` order, kept sorted per bucket: taking
    the first n costs O(n log buckets) instead of a sort of every waiting request."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # queue level -> bucket -> its (static key, arrival, id) entries, sorted
        self._levels: dict[Hashable, dict[Bucket, list[tuple[float, float, str]]]] = {}
        self._entries: dict[str, tuple[Bucket, tuple[float, float, str], Request]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, r: Request) -> bool:
        return r.id in self._entries

    def add(self, r: Request) -> None:
        bucket, key = self.policy.place(r)
        entry = (key, r.arrival, r.id)
        insort(self._levels.setdefault(bucket[0], {}).setdefault(bucket, []), entry)
        self._entries[r.id] = bucket, entry, r

    def remove(self, r: Request) -> None:
        found = self._entries.pop(r.id, None)
        if found is None:
            return
        bucket, entry, _ = found
        buckets = self._levels[bucket[0]]
        entries = buckets[bucket]
        del entries[bisect_left(entries, entry)]
        if not entries:
            del buckets[bucket]
            if not buckets:
                del self._levels[bucket[0]]

    def first(self, n: int, skip: set[str]) -> list[Request]:
        """The first n requests of the policy's order, leaving out the ids in `skip`."""
        scale = self.policy.scales()
        chosen: list[Request] = []
        for level in sorted(self._levels):  # type: ignore[type-var]
            heads = []
            for bucket, entries in self._levels[level].items():
                s = scale(bucket)
                heads.append((s * entries[0][0], entries[0][1], entries[0][2], s, 0, entries))
            heapq.heapify(heads)
            while heads and len(chosen) < n:
                _, _, rid, s, i, entries = heapq.heappop(heads)
                if rid not in skip:
                    chosen.append(self._entries[rid][2])
                if i + 1 < len(entries):
                    nxt = entries[i + 1]
                    heapq.heappush(heads, (s * nxt[0], nxt[1], nxt[2], s, i + 1, entries))
            if len(chosen) >= n:
                break
        return chosen


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
