"""Scheduling policies on synthetic traces (no gRPC): ordering rules and mean latency."""

from __future__ import annotations

import random
import statistics

import pytest

from specd.proto.v1 import common_pb2
from specd.router.config import QueueSettings
from specd.router.policies import LAPSSD, Policy, WaitQueue, make_policy
from specd.router.request import Request

QUEUES = QueueSettings()
K = 4


def request(rid: str, arrival: float, length: int, predicted: float | None = None) -> Request:
    return Request(id=rid, prompt=[1, 2, 3], max_new_tokens=length, sampling=common_pb2.SamplingParams(),
                   max_k=K, stop_token=None, predicted_length=predicted or length, arrival=arrival)


def costs(k: int) -> tuple[float, float]:
    return 0.1, 1.0  # draft pass, target pass


def population() -> tuple[float, int]:
    return 0.5, K  # global acceptance, typical k


def simulate(policy_name: str, trace: list[tuple[float, int, float]], batch: int = 2) -> float:
    """Mean latency in iterations: each iteration serves `batch` requests in policy order, and a
    request with acceptance a gains K*a + 1 tokens per iteration (fractions carried over)."""
    policy = make_policy(policy_name, QUEUES, costs, population)
    pending = [(request(f"r{i}", arrival, length), acceptance) for i, (arrival, length, acceptance) in enumerate(trace)]
    alpha = {r.id: a for r, a in pending}
    credit = {r.id: 0.0 for r, _ in pending}
    active: list[Request] = []
    latencies = []
    now = 0.0
    while pending or active:
        active += [r for r, _ in pending if r.arrival <= now]
        pending = [(r, a) for r, a in pending if r.arrival > now]
        for r in policy.order(active)[:batch]:
            accepted = round(K * alpha[r.id])
            credit[r.id] += K * alpha[r.id] + 1
            gained = int(credit[r.id])
            credit[r.id] -= gained
            r.committed.extend([0] * min(gained, r.remaining))
            r.iterations += 1
            r.last_k = K
            r.proposed += K
            r.acceptance.observe(accepted, K)
            r.acceptance_history.append(r.acceptance.value)
            if r.remaining <= 0:
                active.remove(r)
                latencies.append(now + 1 - r.arrival)
        now += 1
    return statistics.fmean(latencies)


def heavy_tailed_trace(seed: int = 3, n: int = 60) -> list[tuple[float, int, float]]:
    rng = random.Random(seed)
    t, trace = 0.0, []
    for _ in range(n):
        t += rng.expovariate(0.35)
        long = rng.random() < 0.2
        trace.append((t, rng.randint(150, 250) if long else rng.randint(8, 30), rng.uniform(0.2, 0.9)))
    return trace


def test_fcfs_serves_in_arrival_order():
    rs = [request("b", 2.0, 5), request("a", 1.0, 500), request("c", 3.0, 1)]
    assert [r.id for r in make_policy("fcfs", QUEUES, costs).order(rs)] == ["a", "b", "c"]


def test_sjf_serves_shortest_prediction_first():
    rs = [request("a", 1.0, 500), request("b", 2.0, 50, predicted=20), request("c", 3.0, 30)]
    assert [r.id for r in make_policy("sjf", QUEUES, costs).order(rs)] == ["b", "c", "a"]


def test_queue_levels_double_their_quantum():
    assert [QUEUES.level(i) for i in (0, 7, 8, 23, 24, 55, 56, 10**6)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("name", ["las", "laps-sd"])
def test_attained_service_preempts_old_requests(name):
    old, new = request("old", 0.0, 500), request("new", 5.0, 500)
    old.iterations = 30  # queue 2
    assert [r.id for r in make_policy(name, QUEUES, costs).order([old, new])] == ["new", "old"]
    assert [r.id for r in make_policy("fcfs", QUEUES, costs).order([old, new])] == ["old", "new"]


def _stable(rid: str, arrival: float, acceptance: float) -> Request:
    r = request(rid, arrival, 100)
    r.last_k = K
    for _ in range(QUEUES.stability_window + 2):
        r.acceptance.observe(round(K * acceptance), K)
        r.acceptance_history.append(r.acceptance.value)
    return r


def test_laps_sd_orders_by_estimated_remaining_time():
    slow, fast = _stable("slow", 0.0, 0.0), _stable("fast", 1.0, 1.0)
    policy = make_policy("laps-sd", QUEUES, costs, population)
    assert isinstance(policy, LAPSSD) and policy.perceptible(slow)
    assert [r.id for r in policy.order([slow, fast])] == ["fast", "slow"]  # same length, better acceptance
    assert [r.id for r in make_policy("las", QUEUES, costs).order([slow, fast])] == ["slow", "fast"]  # blind
    # not yet perceptible: the population's acceptance (0.5) stands in for its own
    fresh, short = request("fresh", 2.0, 100), request("short", 3.0, 10)
    assert not policy.perceptible(fresh)
    assert [r.id for r in policy.order([slow, fast, fresh, short])] == ["short", "fast", "fresh", "slow"]
    # T = remaining * (n*T_draft + T_target) / (n*A + 1)
    assert policy.remaining_time(fast) == pytest.approx(100 * (K * 0.1 + 1.0) / (K * fast.acceptance.value + 1))
    assert policy.remaining_time(fresh) == pytest.approx(100 * (K * 0.1 + 1.0) / (K * 0.5 + 1))


def test_stability_needs_a_full_window_of_small_moves():
    r = request("r", 0.0, 100)
    for value in [0.5, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5]:
        r.acceptance_history.append(value)
    assert not r.is_stable(8, 0.02)
    for _ in range(9):
        r.acceptance_history.append(0.7)
    assert r.is_stable(8, 0.02)


def test_mean_latency_on_a_heavy_tailed_trace():
    trace = heavy_tailed_trace()
    latency = {name: simulate(name, trace) for name in ("fcfs", "las", "sjf", "laps-sd")}
    assert latency["laps-sd"] <= 0.75 * latency["fcfs"], latency
    assert latency["las"] < latency["fcfs"], latency
    assert latency["sjf"] < latency["fcfs"], latency
    assert latency["laps-sd"] <= latency["las"], latency  # acceptance awareness helps on top of LAS


def _random_waiting(rng: random.Random, n: int) -> list[Request]:
    rs = []
    for i in range(n):
        r = request(f"r{i}", rng.uniform(0, 100), rng.randint(1, 400), predicted=rng.uniform(1, 400))
        r.iterations = rng.randrange(0, 80)
        r.last_k = rng.randrange(0, K + 1)
        r.committed.extend([0] * rng.randrange(0, 50))
        for _ in range(rng.randrange(0, 12)):  # some become perceptible, some not
            r.acceptance.observe(rng.choice((K, K, rng.randrange(0, K + 1))), K)
            r.acceptance_history.append(r.acceptance.value)
        rs.append(r)
    return rs


def _queued(name: str, rng: random.Random, n: int) -> tuple[Policy, list[Request], WaitQueue]:
    """`n` random requests waiting in a policy's queue."""
    policy = make_policy(name, QUEUES, lambda k: (0.1 + 0.01 * k, 1.0 + 0.05 * k), population)
    waiting = _random_waiting(rng, n)
    queue = WaitQueue(policy)
    for r in waiting:
        queue.add(r)
    return policy, waiting, queue


@pytest.mark.parametrize("name", ["fcfs", "las", "sjf", "laps-sd"])
def test_wait_queue_takes_the_policys_first_requests(name):
    """The incremental queue a decision reads gives exactly the first n of the policy's full order,
    through additions, removals and skipped (KV-waiting) requests."""
    rng = random.Random(7)
    policy, waiting, queue = _queued(name, rng, 300)
    for r in rng.sample(waiting, 100):
        queue.remove(r)
        waiting.remove(r)
    skip = {r.id for r in rng.sample(waiting, 20)}
    for n in (1, 8, 32, 500):
        expected = [r for r in policy.order(waiting) if r.id not in skip][:n]
        assert [r.id for r in queue.first(n, skip)] == [r.id for r in expected]
    assert len(queue) == 200


@pytest.mark.parametrize("name", ["fcfs", "las", "sjf", "laps-sd"])
def test_wait_queue_take_removes_what_first_gives(name):
    """`take` (a lane's pick) gives what `first` gives and leaves exactly the other requests waiting,
    in order, the skipped (KV-waiting) ones included; and requests that wait again are placed anew."""
    rng = random.Random(11)
    policy, waiting, queue = _queued(name, rng, 200)
    for n, skipped in ((8, 0), (8, 5), (32, 0), (1, 3), (0, 0), (300, 10)):
        skip = {r.id for r in rng.sample(waiting, skipped)}
        expected = [r.id for r in queue.first(n, skip)]
        taken = queue.take(n, skip)
        assert [r.id for r in taken] == expected
        waiting = [r for r in waiting if r not in taken]
        assert len(queue) == len(waiting) and all(r in queue for r in waiting)
        assert not any(r in queue for r in taken)
        assert [r.id for r in queue.first(len(waiting), set())] == [r.id for r in policy.order(waiting)]
        for r in taken[: len(taken) // 2]:  # an iteration later, half of them wait again
            r.iterations += 5
            r.committed.append(0)
            queue.add(r)
            waiting.append(r)
    assert [r.id for r in queue.first(len(waiting), set())] == [r.id for r in policy.order(waiting)]
