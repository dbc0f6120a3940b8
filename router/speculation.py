"""Speculation control: how many tokens each request drafts in the next iteration.

- none (alias off): k = 0.
- fixed:K: k = K (capped by the request's own limit and its remaining tokens).
- goodput (SmartSpec, Liu et al. 2024): each iteration evaluates k = 0..maxK for the whole batch
  and takes the k that maximises goodput(k) = sum_i E[tokens_i(k)] / T(k), where
  E[tokens_i(k)] = (1 - a_i^(k+1)) / (1 - a_i) and a_i is the request's acceptance estimate
  (seeded with the global one at admission). T(k) comes from `CostModel`, fitted online to the
  step times the workers measure; in the two-lane pipeline it is the period this batch shares with
  the batch in flight on the same target, whose verify hides this one's drafting, over both
  batches' tokens (`CostModel.timer`). k = 0 wins whenever speculation does not pay. The batch-wide
  k is then refined per request by +-1 moves while they raise the modelled goodput, so requests
  whose drafts are often accepted draft more than those whose drafts are not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from operator import mul

from specd.commit_rule import draft_cap
from specd.contract import speculation_mode
from specd.router.request import AcceptanceEstimate, Request

REFINE_SWEEPS = 3  # rounds of per-request +-1 moves (bounded: the choice runs every iteration)
# when goodput says k = 0, every EXPLORE_EVERY-th such batch drafts one token anyway: otherwise the
# acceptance and draft-cost estimates that made k = 0 win could never be corrected
EXPLORE_EVERY = 16
OVERHEAD_WINDOW = 256  # calls over which an overhead is the minimum (its queue-free part: CostModel)
PARTNERS_KEPT = 4  # batches remembered per target: more than the lanes of a pipeline (RouterConfig.pipeline_depth)


@dataclass
class LinearFit:
    """seconds = base + per_token * tokens + per_context * context (SmartSpec's cost model: linear
    in the tokens a pass feeds and in the context it reads), least squares with exponential
    forgetting. Each solve is damped toward the current coefficients, so a direction the data do
    not vary in (one batch size so far, a context that moves with the tokens) keeps its value
    instead of being guessed."""

    base: float
    per_token: float
    per_context: float = 0.0
    decay: float = 0.98
    damping: float = 1e-6  # relative to each regressor's own sum of squares
    _xx: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])
    _xy: list[float] = field(default_factory=lambda: [0.0] * 3)

    def add(self, tokens: float, seconds: float, context: float = 0.0) -> None:
        x, d = (1.0, tokens, context), self.decay
        for i in range(3):
            self._xy[i] = d * self._xy[i] + x[i] * seconds
            row = self._xx[i]
            for j in range(3):
                row[j] = d * row[j] + x[i] * x[j]
        current = (self.base, self.per_token, self.per_context)
        damp = [self.damping * self._xx[i][i] + 1e-30 for i in range(3)]
        a = [[self._xx[i][j] + (damp[i] if i == j else 0.0) for j in range(3)] for i in range(3)]
        b = [self._xy[i] + damp[i] * current[i] for i in range(3)]
        solved = _solve3(a, b)
        if solved is not None:
            self.base, self.per_token, self.per_context = (max(c, 0.0) for c in solved)

    def __call__(self, tokens: float, context: float = 0.0) -> float:
        return self.base + self.per_token * tokens + self.per_context * context


def _solve3(a: list[list[float]], b: list[float]) -> tuple[float, float, float] | None:
    """x with a x = b for a 3x3 system (Cramer's rule); None when a is singular."""
    def det(m: list[list[float]]) -> float:
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    whole = det(a)
    if not whole or whole != whole:  # singular or NaN
        return None
    x = [det([[b[r] if c == col else a[r][c] for c in range(3)] for r in range(3)]) / whole for col in range(3)]
    return x[0], x[1], x[2]


@dataclass
class WindowedMin:
    """The least of the last `window` samples, O(1) amortised: a queue of the samples that may
    still become the least (each smaller than those after it), with their positions."""

    window: int
    _count: int = 0
    _queue: deque[tuple[int, float]] = field(default_factory=deque)

    def add(self, sample: float) -> float:
        queue, position = self._queue, self._count
        while queue and queue[-1][1] >= sample:
            queue.pop()
        queue.append((position, sample))
        if queue[0][0] <= position - self.window:
            queue.popleft()
        self._count = position + 1
        return queue[0][1]


@dataclass
class CostModel:
    """Time of one iteration, from the workers' measured pass times plus the measured RPC overhead."""

    target_pass: LinearFit = field(default_factory=lambda: LinearFit(0.005, 0.0005))
    draft_pass: LinearFit = field(default_factory=lambda: LinearFit(0.001, 0.0002))
    # round trip minus the worker's compute time, without queueing: a call that waited behind another
    # on the same replica (the other lane's, in the two-lane pipeline) measures that wait too, which
    # `timer` predicts itself. So the overhead is the least excess of the last OVERHEAD_WINDOW calls
    # (a windowed minimum, as TCP's minimum round-trip estimates): it follows a network that slows.
    target_overhead: float = 0.001
    draft_overhead: float = 0.001
    # the typical excess, waits and scheduling delays included (EMA): reported, not decided on; a
    # replay of the run (specd/sim/validate.py) matches its simulated router's to it
    target_overhead_mean: float = 0.001
    draft_overhead_mean: float = 0.001
    _target_excess: WindowedMin = field(default_factory=lambda: WindowedMin(OVERHEAD_WINDOW), repr=False)
    _draft_excess: WindowedMin = field(default_factory=lambda: WindowedMin(OVERHEAD_WINDOW), repr=False)

    def observe_target(self, tokens: int, compute_s: float, round_trip_s: float, context: float = 0.0) -> None:
        """A Verify call: `tokens` fed, `context` tokens of the batch's requests already cached."""
        self.target_pass.add(tokens, compute_s, context)
        excess = max(round_trip_s - compute_s, 0.0)
        self.target_overhead = self._target_excess.add(excess)
        self.target_overhead_mean = 0.9 * self.target_overhead_mean + 0.1 * excess

    def observe_draft(self, tokens_per_pass: float, passes: int, compute_s: float, round_trip_s: float,
                      context: float = 0.0) -> None:
        """A Propose call (or a target's own drafting): `context` tokens of its requests per pass."""
        if passes:
            self.draft_pass.add(tokens_per_pass, compute_s / passes, context)
        excess = max(round_trip_s - compute_s, 0.0)
        self.draft_overhead = self._draft_excess.add(excess)
        self.draft_overhead_mean = 0.9 * self.draft_overhead_mean + 0.1 * excess

    def iteration(self, ks: list[int], context: float = 0.0, partner: tuple[float, float] = (0.0, 0.0)) -> float:
        """Seconds of one iteration in which request i drafts ks[i] tokens (see `timer`)."""
        return self.timer(len(ks), context, partner)(sum(ks), max(ks, default=0))

    def parts(self, requests: int, context: float = 0.0) -> Callable[[int, int], tuple[float, float]]:
        """(drafted, passes) -> (verify, off) seconds of an iteration of `requests` requests (`context`
        tokens cached) that draft `drafted` tokens in all, the longest `passes` of them: the target's
        compute, and the lane's time off the target (the Propose round trip, whose pass j feeds every
        request still drafting at step j, plus the Verify's own round trip beyond compute). Every
        draft pass is charged the whole batch's context (an upper bound when the requests' k differ)."""
        t = self.target_pass
        t_base = t.base + t.per_token * requests + t.per_context * context
        t_token, d_token = t.per_token, self.draft_pass.per_token
        d_base = self.draft_pass.base + self.draft_pass.per_context * context
        t_overhead, d_overhead = self.target_overhead, self.target_overhead + self.draft_overhead

        def parts(drafted: int, passes: int) -> tuple[float, float]:
            return (t_base + t_token * drafted,
                    passes * d_base + d_token * drafted + d_overhead if passes else t_overhead)

        return parts

    def timer(self, requests: int, context: float = 0.0,
              partner: tuple[float, float] = (0.0, 0.0)) -> Callable[[int, int], float]:
        """(drafted, passes) -> seconds (see `parts`) of the period in which this batch (A) and
        `partner` (B: its verify and off seconds), the batch in flight on the same target in the
        two-lane pipeline, each run one iteration. A's time off the target runs while the target
        verifies B and the other way round, so the target idles for max(0, off_A - verify_B) before
        A's verify and max(0, off_B - verify_A) before B's: the period is
        max(verify_A, off_B) + max(verify_B, off_A). With nothing in flight (partner (0, 0)) it is
        A's verify + off. (A closure over the current fits: SpeculationControl.choose calls it
        dozens of times per decision.)"""
        return pipelined(self.parts(requests, context), partner)

    def single(self, k: int) -> tuple[float, float]:
        """(draft pass, target pass) seconds for a request alone (LAPS-SD's T_draft, T_target)."""
        return self.draft_pass(1), self.target_pass(k + 1) + self.target_overhead


def pipelined(parts: Callable[[int, int], tuple[float, float]],
              partner: tuple[float, float]) -> Callable[[int, int], float]:
    """CostModel.timer's period, from a batch's `parts` and its partner's (verify, off)."""
    other_verify, other_off = partner

    def seconds(drafted: int, passes: int) -> float:
        verify, off = parts(drafted, passes)
        return (verify if verify > other_off else other_off) + (other_verify if other_verify > off else off)

    return seconds


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one iteration yields with k drafts at acceptance alpha (bonus/correction included)."""
    if k <= 0:
        return 1.0
    if alpha >= 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


class SpeculationControl:
    def __init__(self, mode: str, k: int, max_k: int, costs: CostModel) -> None:
        self.mode = speculation_mode(mode)  # canonical: `off` is `none`
        self.k = k
        self.max_k = max_k
        self.costs = costs
        self.acceptance = AcceptanceEstimate()  # global estimate (SmartSpec's reference starts at 0.7)
        self.typical_k = k if mode == "fixed" else 0  # mean k of the last batch (LAPS-SD's n for new requests)
        self._idle_choices = 0  # goodput choices of k = 0 for a batch that could have drafted
        # target -> (first request, expected tokens, (verify, off)) of the batches last chosen for it:
        # the one still in flight is the next batch's partner in the two-lane pipeline (CostModel.timer)
        self._in_flight: dict[str | None, deque[tuple[Request, float, tuple[float, float]]]] = {}

    def choose(self, batch: list[Request], drafting: list[bool], overlapped: bool = False) -> list[int]:
        """k for each request of the batch; 0 for those without a live draft replica.

        overlapped: another batch is in flight on the same target replica (see CostModel.timer).
        """
        caps = [draft_cap(r.max_k, r.remaining) if ok else 0 for r, ok in zip(batch, drafting)]
        if self.mode == "none":
            return [0] * len(batch)
        if self.mode == "fixed":
            return [min(self.k, cap) for cap in caps]
        context = sum(len(r.committed) for r in batch)
        partner = self._partner(batch) if overlapped else None
        other_tokens = partner[1] if partner else 0.0  # the period's tokens: both batches'
        parts = self.costs.parts(len(batch), context)
        seconds = pipelined(parts, partner[2] if partner else (0.0, 0.0))
        # An iteration's time depends on the batch only through its total and its longest drafts
        # (CostModel.parts), and the j-th draft of a request at acceptance a adds a^j expected tokens
        # (the differences of expected_tokens): so every trial below is a few additions and one division.
        alphas, top = [r.acceptance.value for r in batch], max(caps)
        gains = [[1.0] * len(batch)]  # [j][i] = a_i^j: request i's j-th draft's tokens (0 past its cap)
        for _ in range(top):
            gains.append(list(map(mul, gains[-1], alphas)))
        for i, cap in enumerate(caps):
            for j in range(cap + 1, top + 1):
                gains[j][i] = 0.0
        drafting_j = [0] * (top + 2)  # [j] = requests that may draft a j-th token
        for cap in caps:
            drafting_j[cap] += 1
        drafting_j = list(accumulate(reversed(drafting_j)))[::-1]
        # SmartSpec: the best single k for the batch (ties go to the smaller k)
        tokens = best_tokens = len(batch) + other_tokens
        drafted = best_drafted = best_k = 0
        value = tokens / seconds(0, 0)
        for k in range(1, min(self.max_k, top) + 1):
            tokens += sum(gains[k])
            drafted += drafting_j[k]
            trial_value = tokens / seconds(drafted, k)
            if trial_value > value:
                best_k, best_tokens, best_drafted, value = k, tokens, drafted, trial_value
        best = [min(best_k, cap) for cap in caps]
        # then per-request +-1 moves while they raise the modelled goodput. A move's time depends only
        # on the batch's drafted total and longest drafts, so the few times a state can move to are
        # computed once per state (lazily: None until needed), not once per trial
        tokens, drafted, passes = best_tokens, best_drafted, max(best)
        count_of = [best.count(k) for k in range(top + 2)]  # requests drafting k
        threshold = value * (1 + 1e-9)
        up = up_longer = down = down_shorter = None  # seconds of the moves from this state
        for _ in range(REFINE_SWEEPS if top else 0):
            moved = 0
            for i, cap in enumerate(caps):
                k_i = best[i]
                if k_i < cap:  # one more draft
                    gain = gains[k_i + 1][i]
                    if k_i == passes:
                        up_longer = up_longer or seconds(drafted + 1, passes + 1)
                        trial_value = (tokens + gain) / up_longer
                    else:
                        up = up or seconds(drafted + 1, passes)
                        trial_value = (tokens + gain) / up
                    if trial_value > threshold:
                        best[i], tokens, drafted, moved = k_i + 1, tokens + gain, drafted + 1, 1
                        count_of[k_i] -= 1
                        count_of[k_i + 1] += 1
                        passes = max(passes, k_i + 1)
                        threshold = trial_value * (1 + 1e-9)
                        up = up_longer = down = down_shorter = None
                        continue
                if k_i:  # one fewer
                    gain = gains[k_i][i]
                    if k_i == passes and count_of[passes] == 1:
                        down_shorter = down_shorter or seconds(drafted - 1, passes - 1)
                        trial_value = (tokens - gain) / down_shorter
                    else:
                        down = down or seconds(drafted - 1, passes)
                        trial_value = (tokens - gain) / down
                    if trial_value > threshold:
                        if k_i == passes and count_of[passes] == 1:
                            passes -= 1
                        best[i], tokens, drafted, moved = k_i - 1, tokens - gain, drafted - 1, 1
                        count_of[k_i] -= 1
                        count_of[k_i - 1] += 1
                        threshold = trial_value * (1 + 1e-9)
                        up = up_longer = down = down_shorter = None
            if not moved:
                break
        if top and not any(best):
            self._idle_choices += 1
            if self._idle_choices % EXPLORE_EVERY == 0:
                best = [min(1, cap) for cap in caps]
                tokens = len(batch) + other_tokens + sum(gains[1])
        self._record(batch, tokens - other_tokens, parts(sum(best), max(best)))
        if top:  # a batch that could not draft says nothing of the typical k
            self.typical_k = round(sum(best) / len(best))
        return best

    def _record(self, batch: list[Request], tokens: float, parts: tuple[float, float]) -> None:
        """Remember the batch as a future partner (CostModel.timer) of its target's next batches."""
        records = self._in_flight.setdefault(batch[0].target, deque(maxlen=PARTNERS_KEPT))
        records.append((batch[0], tokens, parts))

    def _partner(self, batch: list[Request]) -> tuple[Request, float, tuple[float, float]] | None:
        """The latest batch chosen for this target that is still in flight (not this one)."""
        for record in reversed(self._in_flight.get(batch[0].target, ())):
            if record[0].in_flight and record[0] not in batch:
                return record
        return None

    def observe(self, r: Request, k: int, accepted: int) -> None:
        r.acceptance.observe(accepted, k)
        self.acceptance.observe(accepted, k)

