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

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable
from heapq import heapify, heappop, heapreplace
from typing import Any

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
        self._buckets: dict[int, Bucket] = {}  # attained service -> (its queue level,)

    def bucket(self, r: Request) -> Bucket:
        bucket = self._buckets.get(r.iterations)
        if bucket is None:
            bucket = self._buckets[r.iterations] = (self.queues.level(r.iterations),)
        return bucket


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
        self._level_of: dict[int, int] = {}  # attained service -> queue level (see `_level`)
        self._window, self._threshold = queues.stability_window, queues.stability_threshold

    def perceptible(self, r: Request) -> bool:
        return r.is_stable(self._window, self._threshold)

    def bucket(self, r: Request) -> Bucket:
        return self.place(r)[0]

    def static_key(self, r: Request) -> float:
        return self.place(r)[1]

    def place(self, r: Request) -> tuple[Bucket, float]:
        # every requeue runs this, so the calls it can spare are spared: `is_stable` is False while the
        # history holds `window` values or fewer (most young requests), max(remaining, 1.0) is inlined
        window = self._window
        perceptible = len(r.acceptance_history) > window and r.is_stable(window, self._threshold)
        remaining = r.predicted_length - r.generated
        if 1.0 > remaining:
            remaining = 1.0
        k = r.last_k
        key = remaining / (k * r.acceptance.value + 1) if perceptible else remaining
        level = self._level_of.get(r.iterations)
        if level is None:
            level = self._level(r.iterations)
        return (level, perceptible, k), key

    def scales(self) -> Callable[[Bucket], float]:
        alpha, n = self.population()
        costs = self.costs
        steps: dict[int, tuple[float, float]] = {}  # k -> costs(k): the buckets of all levels share them
        unknown = n * alpha + 1  # the population's denominator

        def scale(bucket: Any) -> float:  # (level, perceptible, k)
            _, perceptible, k = bucket
            step = steps.get(k)
            if step is None:
                step = steps[k] = costs(k)
            t_draft, t_target = step
            return k * t_draft + t_target if perceptible else (n * t_draft + t_target) / unknown

        return scale

    def _level(self, iterations: int) -> int:
        """`QueueSettings.level`, remembered per attained service (the settings are frozen)."""
        level = self._level_of[iterations] = self.queues.level(iterations)
        return level

    def remaining_time(self, r: Request) -> float:
        return self.scales()(self.bucket(r)) * self.static_key(r)


# a waiting request in its bucket: (static key, arrival, id, the request). Ids are unique in a queue,
# so comparisons (the sort, the merge) end at the id and never reach the request.
Entry = tuple[float, float, str, Request]
# how far a decision read a bucket: (its level, the bucket, its entries, the entries read: taken or skipped)
Read = tuple[Hashable, Bucket, list[Entry], int]


class WaitQueue:
    """The waiting requests of one target replica in `policy` order, kept sorted per bucket: taking
    the first n costs O(n log buckets) instead of a sort of every waiting request. A lane's pick is
    `take`: the first n leave the queue in one pass (a slice off the front of each bucket read)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # queue level -> bucket -> its entries, sorted
        self._levels: dict[Hashable, dict[Bucket, list[Entry]]] = {}
        self._entries: dict[str, tuple[Bucket, Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, r: Request) -> bool:
        return r.id in self._entries

    def add(self, r: Request) -> None:
        bucket, key = self.policy.place(r)
        entry = (key, r.arrival, r.id, r)
        buckets = self._levels.get(bucket[0])
        if buckets is None:
            buckets = self._levels[bucket[0]] = {}
        entries = buckets.get(bucket)
        if entries is None:
            buckets[bucket] = [entry]
        else:
            insort(entries, entry)
        self._entries[r.id] = bucket, entry

    def remove(self, r: Request) -> None:
        found = self._entries.pop(r.id, None)
        if found is None:
            return
        bucket, entry = found
        buckets = self._levels[bucket[0]]
        entries = buckets[bucket]
        del entries[bisect_left(entries, entry)]
        if not entries:
            del buckets[bucket]
            if not buckets:
                del self._levels[bucket[0]]

    def first(self, n: int, skip: set[str] | frozenset[str] = frozenset()) -> list[Request]:
        """The first n requests of the policy's order, leaving out the ids in `skip`."""
        return [entry[3] for entry in self._select(n, skip)[0]]

    def take(self, n: int, skip: set[str] | frozenset[str] = frozenset()) -> list[Request]:
        """`first`, and those requests leave the queue."""
        chosen, read = self._select(n, skip)
        levels = self._levels
        for level, bucket, entries, upto in read:
            if skip:  # the skipped ones stay
                entries[:upto] = [entry for entry in entries[:upto] if entry[2] in skip]
            else:
                del entries[:upto]
            if not entries:
                buckets = levels[level]
                del buckets[bucket]
                if not buckets:
                    del levels[level]
        known = self._entries
        for entry in chosen:
            del known[entry[2]]
        return [entry[3] for entry in chosen]

    def _select(self, n: int, skip: set[str] | frozenset[str]) -> tuple[list[Entry], list[Read]]:
        """The entries of the first n requests not in `skip`, in order, and how far each bucket was
        read. A bucket alone in its level is read in its own order; the buckets of a level are merged
        by (scale * static key, arrival, id) through a heap of their heads."""
        chosen: list[Entry] = []
        read: list[Read] = []
        if n <= 0:
            return chosen, read
        levels = self._levels
        scale = None
        for level in sorted(levels):  # type: ignore[type-var]
            buckets = levels[level]
            if len(buckets) == 1:  # one bucket: its own order (no scale, no merge)
                [(bucket, entries)] = buckets.items()
                if not skip:
                    upto = n - len(chosen)
                    chosen += entries[:upto]
                    read.append((level, bucket, entries, min(upto, len(entries))))
                else:
                    upto = 0
                    for entry in entries:
                        upto += 1
                        if entry[2] not in skip:
                            chosen.append(entry)
                            if len(chosen) >= n:
                                break
                    read.append((level, bucket, entries, upto))
                if len(chosen) >= n:
                    break
                continue
            if scale is None:
                scale = self.policy.scales()
            heads: list[tuple[float, float, str, float, int, list[Entry], Bucket]] = []
            for bucket, entries in buckets.items():
                s = scale(bucket)
                head = entries[0]
                heads.append((s * head[0], head[1], head[2], s, 0, entries, bucket))
            heapify(heads)
            while heads:
                _, _, rid, s, i, entries, bucket = heads[0]
                entry = entries[i]
                i += 1
                if i < len(entries):
                    head = entries[i]
                    heapreplace(heads, (s * head[0], head[1], head[2], s, i, entries, bucket))
                else:
                    heappop(heads)
                    read.append((level, bucket, entries, i))
                if rid not in skip:
                    chosen.append(entry)
                    if len(chosen) >= n:
                        break
            for _, _, _, _, i, entries, bucket in heads:
                if i:
                    read.append((level, bucket, entries, i))
            if len(chosen) >= n:
                break
        return chosen, read


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
