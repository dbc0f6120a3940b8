"""The scheduler's decisions, free of I/O: admission limits, which requests a lane runs next, how
many tokens each drafts, and what a verified iteration commits.

The live router (`router/scheduler.py`: asyncio lanes, gRPC calls, failover) and the simulator
(`specd/sim`: simulated workers on a virtual clock) both run this code; they differ only in the
clock and in how an iteration's calls reach the workers.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from specd.commit_rule import cut
from specd.proto.v1 import serving_pb2
from specd.router.config import RouterConfig
from specd.router.policies import WaitQueue, make_policy
from specd.router.request import AcceptanceEstimate, Request
from specd.router.speculation import CostModel, SpeculationControl

Clock = Callable[[], float]


class RequestFailed(Exception):
    """Ends a request's stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Window:
    """Values recorded over a sliding window (the last minute): their rate per second and their
    mean. Every windowed figure of the Stats RPC is one of these (goodput, drafting, TTFT, ...)."""

    def __init__(self, clock: Clock = time.monotonic, window_s: float = 60.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self.started = clock()
        self._events: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def add(self, value: float, now: float) -> None:
        self._events.append((now, value))
        self._total += value
        self._trim(now)

    def per_second(self, now: float | None = None) -> float:
        """Sum of the window's values per second (over the router's life while it is younger)."""
        now = self.clock() if now is None else now
        self._trim(now)
        span = min(self.window_s, now - self.started)
        return self._total / span if span > 0 else 0.0

    def mean(self, now: float | None = None) -> float:
        """Mean of the window's values; 0 while it holds none."""
        self._trim(self.clock() if now is None else now)
        return self._total / len(self._events) if self._events else 0.0

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._total -= self._events.popleft()[1]
        if not self._events:
            self._total = 0.0  # no float residue once the window is empty


class LengthPredictor:
    """Output lengths from running statistics: the lengths of the last `window` finished requests
    with the same max_new_tokens (a proxy for the kind of request), as fractions of it.

    A request that has generated g tokens is predicted the mean of the observed lengths longer
    than g (the expected length given that it is still running). Output lengths are heavy-tailed,
    so this grows with g: a request that has run long is likely to run long yet, which is what
    LAPS-SD's remaining-time estimate needs. Before any observation longer than g it falls back
    to the running mean ratio of generated / max_new_tokens.
    """

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        self.ratio = 1.0
        self.count = 0
        self.abs_error = 0.0  # sum of |predicted at admission - actual| / actual
        self._recent: dict[int, deque[int]] = {}  # max_new_tokens -> recent lengths
        self._sorted: dict[int, tuple[list[int], list[int]]] = {}  # max_new_tokens -> (sorted, suffix sums)

    def predict(self, max_new_tokens: int, generated: int = 0) -> float:
        table = self._sorted.get(max_new_tokens)
        lengths, suffix = table if table is not None else self._table(max_new_tokens)
        i, n = bisect_right(lengths, generated), len(lengths)
        if i < n:
            return suffix[i] / (n - i)
        return max(1.0, generated + 1.0, self.ratio * max_new_tokens)

    def observe(self, r: Request) -> None:
        actual = max(r.generated, 1)
        self.count += 1
        self.abs_error += abs(self.predict(r.max_new_tokens) - actual) / actual
        self.ratio += (actual / r.max_new_tokens - self.ratio) / min(self.count, 50)
        recent = self._recent.setdefault(r.max_new_tokens, deque(maxlen=self.window))
        recent.append(actual)
        self._sorted.pop(r.max_new_tokens, None)

    def _table(self, max_new_tokens: int) -> tuple[list[int], list[int]]:
        table = self._sorted.get(max_new_tokens)
        if table is None:
            lengths = sorted(self._recent.get(max_new_tokens, ()))
            suffix = list(itertools.accumulate(reversed(lengths)))[::-1]  # suffix[i] = sum(lengths[i:])
            table = self._sorted[max_new_tokens] = (lengths, suffix)
        return table

    @property
    def mean_relative_error(self) -> float:
        return self.abs_error / self.count if self.count else 0.0


@dataclass(frozen=True)
class Committed:
    """What one verified iteration added to a request's output."""

    tokens: list[int]  # new tokens to stream (after the length cap and the stop token)
    finish_reason: int  # serving_pb2.FinishReason; FINISH_REASON_UNSPECIFIED while it goes on


class Decisions:
    """Admitted requests (indexed by their target replica) and the decisions made on them."""

    def __init__(self, config: RouterConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.costs = CostModel()
        self.speculation = SpeculationControl(config.speculation, config.k, config.max_k, self.costs)
        self.policy = make_policy(config.policy, config.queues, self.costs.single,
                                  lambda: (self.speculation.acceptance.value, self.speculation.typical_k))
        self.lengths = LengthPredictor()
        # the last minute's figures (the Stats RPC, the operator's autoscaling)
        self.streamed = Window(clock)  # tokens streamed to clients
        self.drafts = Window(clock)  # per request-iteration: its k
        self.speculating = Window(clock)  # per request-iteration: 1 when it drafted (k > 0), else 0
        self.draft_busy = Window(clock)  # per Propose call: the draft replica's compute seconds
        self.ttft = Window(clock)  # per first token: seconds since the request's arrival
        self.tpot = Window(clock)  # per finished request of more than one token: seconds per later token
        self.finished = 0
        self.drafted = 0
        self.requests: dict[str, Request] = {}  # admitted, not finished
        self._by_target: dict[str, dict[str, Request]] = {}  # target address -> its requests
        self._waiting: dict[str, WaitQueue] = {}  # target address -> its requests not in flight

    # -- admission and the target index ---------------------------------------------------------

    def check_admission(self, accepting: bool) -> None:
        if not accepting:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "the router is shutting down")
        if len(self.requests) >= self.config.max_queued_requests:
            raise RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"queue full: {len(self.requests)} requests admitted "
                                f"(maxQueuedRequests={self.config.max_queued_requests})")

    def admit(self, r: Request, target: str) -> None:
        """Take an admitted request in, pinned to `target` (the caller chose the replica)."""
        r.acceptance = AcceptanceEstimate.seeded(self.speculation.acceptance.value)
        self.requests[r.id] = r
        self.move(r, target)

    def move(self, r: Request, target: str | None) -> None:
        """Pin a request to another target replica (None: to none) in the index."""
        if r.target is not None:
            self._by_target.get(r.target, {}).pop(r.id, None)
            self._queue(r.target).remove(r)
        r.target = target
        if target is not None and r.id in self.requests:
            self._by_target.setdefault(target, {})[r.id] = r
            if not r.in_flight:
                self._queue(target).add(r)

    def forget(self, r: Request) -> bool:
        """Drop a finished or cancelled request; False when it was already gone."""
        if self.requests.pop(r.id, None) is None:
            return False
        if r.target is not None:
            self._by_target.get(r.target, {}).pop(r.id, None)
            self._queue(r.target).remove(r)
        return True

    def _queue(self, target: str) -> WaitQueue:
        queue = self._waiting.get(target)
        if queue is None:
            queue = self._waiting[target] = WaitQueue(self.policy)
        return queue

    # -- the next batch and its speculation lengths ---------------------------------------------

    def pick(self, target: str, kv_waiting: set[str]) -> list[Request]:
        """The next batch of a lane of `target`, marked in flight until `end`: the policy's first
        requests, up to an even share of the replica's requests per lane (so that with few requests
        every lane runs small, fast batches) and maxBatchSize. `kv_waiting` (requests evicted for
        lack of KV room) is cleared when nothing runs on the replica: nothing running there will
        free room."""
        mine, queue = len(self._by_target.get(target, {})), self._queue(target)
        if mine == len(queue):  # nothing in flight
            kv_waiting.clear()
        config = self.config
        share = -(-mine // config.pipeline_depth)  # ceil
        batch = queue.take(min(config.max_batch_size, share), kv_waiting)
        for r in batch:
            r.in_flight = True
        return batch

    def end(self, batch: list[Request]) -> None:
        """The batch's iteration is over: its unfinished requests wait again (in their new order)."""
        requests, waiting, predict = self.requests, self._waiting, self.lengths.predict
        for r in batch:
            r.in_flight = False
            target = r.target
            if target is not None and r.id in requests and not r.done:
                r.predicted_length = predict(r.max_new_tokens, r.generated)
                queue = waiting.get(target)
                (queue if queue is not None else self._queue(target)).add(r)

    def may_draft(self, r: Request) -> bool:
        """Whether a request needs a draft replica: it may speculate and speculation is on."""
        return bool(r.max_k) and self.config.speculation != "none"

    def choose(self, batch: list[Request], drafting: list[bool], overlapped: bool) -> list[int]:
        """k per request (see SpeculationControl.choose); marks the first scheduling time."""
        now = self.clock()
        for r in batch:
            r.first_scheduled = r.first_scheduled or now
        return self.speculation.choose(batch, drafting, overlapped=overlapped)

    def observe_draft(self, tokens_per_pass: float, passes: int, compute_s: float, round_trip_s: float,
                      now: float, context: float = 0.0) -> None:
        """A draft replica's Propose call: its costs (the cost model) and its busy time."""
        self.costs.observe_draft(tokens_per_pass, passes, compute_s, round_trip_s, context)
        self.draft_busy.add(compute_s, now)

    def stats(self, live_targets: int, live_drafts: int) -> serving_pb2.RouterStats:
        """The live figures (`specd.v1.Specd/Stats`), given the replicas that serve now."""
        running = sum(r.in_flight for r in self.requests.values())
        busy = self.draft_busy.per_second() / live_drafts if live_drafts else 0.0
        return serving_pb2.RouterStats(
            acceptance_rate=self.speculation.acceptance.value if self.drafted else 0.0,
            goodput_tokens_per_s=self.streamed.per_second(), drafted_tokens=self.drafted,
            current_k=self.speculation.typical_k, queued_requests=len(self.requests) - running,
            running_requests=running, finished_requests=self.finished, live_targets=live_targets,
            live_drafts=live_drafts, policy=self.config.policy, speculation=self.config.speculation_label,
            speculating_fraction=self.speculating.mean(), drafted_tokens_per_s=self.drafts.per_second(),
            draft_busy_fraction=min(busy, 1.0), mean_ttft_s=self.ttft.mean(), mean_tpot_s=self.tpot.mean())

    # -- commit ---------------------------------------------------------------------------------

    def commit(self, r: Request, k: int, accepted: int, tokens: list[int], now: float) -> Committed:
        """Record one verified iteration of `r` (k drafted, `accepted` of them accepted) and append
        the tokens it emitted, up to max_new_tokens and the stop token. The caller streams
        `Committed.tokens` and retires the request when it finished."""
        r.iterations += 1
        r.proposed += k
        r.accepted += accepted
        self.drafted += k
        self.drafts.add(k, now)
        self.speculating.add(k > 0, now)
        r.last_k = k
        self.speculation.observe(r, k, accepted)
        r.acceptance_history.append(r.acceptance.value)
        if r.done:  # cancelled or failed while in flight
            return Committed([], serving_pb2.FINISH_REASON_UNSPECIFIED)
        tokens, stopped = cut(tokens, r.remaining, r.stop_token)
        reason = serving_pb2.FINISH_REASON_EOS if stopped else serving_pb2.FINISH_REASON_UNSPECIFIED
        r.committed.extend(tokens)
        if tokens:
            if r.first_token is None:
                r.first_token = now
                self.ttft.add(now - r.arrival, now)
            self.streamed.add(len(tokens), now)
        if not reason and r.remaining <= 0:
            reason = serving_pb2.FINISH_REASON_LENGTH
        if reason:
            r.finish_reason = reason
            r.finished_at = now
            self.finished += 1
            self.lengths.observe(r)
            if r.generated > 1 and r.first_token is not None:
                self.tpot.add((now - r.first_token) / (r.generated - 1), now)
        return Committed(tokens, reason)
