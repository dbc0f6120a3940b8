"""Speculation control: how many tokens each request drafts in the next iteration.

- none (alias off): k = 0.
- fixed:K: k = K (capped by the request's own limit and its remaining tokens).
- goodput (SmartSpec, Liu et al. 2024): each iteration evaluates k = 0..maxK for the whole batch
  and takes the k that maximises goodput(k) = sum_i E[tokens_i(k)] / T(k), where
  E[tokens_i(k)] = (1 - a_i^(k+1)) / (1 - a_i) and a_i is the request's acceptance estimate
  (seeded with the global one at admission). T(k) comes from `CostModel`, fitted online to the
  step times the workers measure. k = 0 wins whenever speculation does not pay. The batch-wide
  k is then refined per request by +-1 moves while they raise the modelled goodput, so requests
  whose drafts are often accepted draft more than those whose drafts are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from specd.commit_rule import draft_cap
from specd.contract import speculation_mode
from specd.router.request import AcceptanceEstimate, Request

REFINE_SWEEPS = 3  # rounds of per-request +-1 moves (bounded: the choice runs every iteration)
# when goodput says k = 0, every EXPLORE_EVERY-th such batch drafts one token anyway: otherwise the
# acceptance and draft-cost estimates that made k = 0 win could never be corrected
EXPLORE_EVERY = 16


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
class CostModel:
    """Time of one iteration, from the workers' measured pass times plus the measured RPC overhead."""

    target_pass: LinearFit = field(default_factory=lambda: LinearFit(0.005, 0.0005))
    draft_pass: LinearFit = field(default_factory=lambda: LinearFit(0.001, 0.0002))
    target_overhead: float = 0.001  # round trip minus the worker's compute time (EMA)
    draft_overhead: float = 0.001

    def observe_target(self, tokens: int, compute_s: float, round_trip_s: float, context: float = 0.0) -> None:
        """A Verify call: `tokens` fed, `context` tokens of the batch's requests already cached."""
        self.target_pass.add(tokens, compute_s, context)
        self.target_overhead = 0.9 * self.target_overhead + 0.1 * max(round_trip_s - compute_s, 0.0)

    def observe_draft(self, tokens_per_pass: float, passes: int, compute_s: float, round_trip_s: float,
                      context: float = 0.0) -> None:
        """A Propose call (or a target's own drafting): `context` tokens of its requests per pass."""
        if passes:
            self.draft_pass.add(tokens_per_pass, compute_s / passes, context)
        self.draft_overhead = 0.9 * self.draft_overhead + 0.1 * max(round_trip_s - compute_s, 0.0)

    def iteration(self, ks: list[int], overlapped: bool = False, context: float = 0.0) -> float:
        """Seconds of one iteration in which request i drafts ks[i] tokens.

        overlapped: another batch is in flight on the same target (the two-lane pipeline), so this
        batch's drafting runs while the target verifies the other one; the target then waits for
        drafts only when drafting takes longer than verifying. context: the batch's cached tokens.
        """
        return self.iteration_of(len(ks), sum(ks), max(ks, default=0), overlapped, context)

    def iteration_of(self, requests: int, drafted: int, passes: int, overlapped: bool = False,
                     context: float = 0.0) -> float:
        """`iteration` from the batch's size, its total drafts and its longest draft."""
        return self.timer(requests, overlapped, context)(drafted, passes)

    def timer(self, requests: int, overlapped: bool = False, context: float = 0.0) -> Callable[[int, int], float]:
        """(drafted, passes) -> seconds of an iteration of `requests` requests that draft `drafted`
        tokens in all, the longest `passes` of them; all the time depends on, as pass j feeds every
        request still drafting at step j: the passes feed `drafted` tokens. (A closure over the
        current fits: SpeculationControl.choose calls it hundreds of times per decision.) Every draft
        pass is charged the whole batch's context (an upper bound when the requests' k differ)."""
        t = self.target_pass
        t_base = t.base + t.per_token * requests + t.per_context * context + self.target_overhead
        t_token, d_token = t.per_token, self.draft_pass.per_token
        d_base = self.draft_pass.base + self.draft_pass.per_context * context
        d_overhead = self.draft_overhead

        def seconds(drafted: int, passes: int) -> float:
            verify = t_base + t_token * drafted
            if not passes:
                return verify
            draft = passes * d_base + d_token * drafted + d_overhead  # = passes * draft_pass(drafted / passes) + ...
            return (verify if verify > draft else draft) if overlapped else verify + draft

        return seconds

    def single(self, k: int) -> tuple[float, float]:
        """(draft pass, target pass) seconds for a request alone (LAPS-SD's T_draft, T_target)."""
        return self.draft_pass(1), self.target_pass(k + 1) + self.target_overhead


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one iteration yields with k drafts at acceptance alpha (bonus/correction included)."""
    if k <= 0:
        return 1.0
    if alpha >= 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def _powers(alpha: float, k_max: int) -> list[float]:
    """[alpha^0, ..., alpha^k_max]: the j-th draft's expected tokens (differences of expected_tokens)."""
    powers = [1.0]
    for _ in range(k_max):
        powers.append(powers[-1] * alpha)
    return powers


class SpeculationControl:
    def __init__(self, mode: str, k: int, max_k: int, costs: CostModel) -> None:
        self.mode = speculation_mode(mode)  # canonical: `off` is `none`
        self.k = k
        self.max_k = max_k
        self.costs = costs
        self.acceptance = AcceptanceEstimate()  # global estimate (SmartSpec's reference starts at 0.7)
        self.typical_k = k if mode == "fixed" else 0  # mean k of the last batch (LAPS-SD's n for new requests)
        self._idle_choices = 0  # goodput choices of k = 0 for a batch that could have drafted

    def choose(self, batch: list[Request], drafting: list[bool], overlapped: bool = False) -> list[int]:
        """k for each request of the batch; 0 for those without a live draft replica.

        overlapped: another batch is in flight on the same target replica (see CostModel.iteration).
        """
        caps = [draft_cap(r.max_k, r.remaining) if ok else 0 for r, ok in zip(batch, drafting)]
        if self.mode == "none" or not any(caps):
            return [0] * len(batch)
        if self.mode == "fixed":
            return [min(self.k, cap) for cap in caps]
        # An iteration's time depends on the batch only through its total and its longest drafts
        # (CostModel.timer), and the j-th draft of a request at acceptance a adds a^j expected tokens
        # (expected_tokens): so every trial below is a few additions and one division.
        seconds = self.costs.timer(len(batch), overlapped, sum(len(r.committed) for r in batch))
        powers = [_powers(r.acceptance.value, cap) for r, cap in zip(batch, caps)]  # [i][j] = a_i^j
        # SmartSpec: the best single k for the batch (ties go to the smaller k)
        tokens = best_tokens = float(len(batch))
        drafted = best_drafted = best_k = 0
        value = tokens / seconds(0, 0)
        for k in range(1, min(self.max_k, max(caps)) + 1):
            for p, cap in zip(powers, caps):
                if cap >= k:
                    tokens += p[k]
                    drafted += 1
            trial_value = tokens / seconds(drafted, k)
            if trial_value > value:
                best_k, best_tokens, best_drafted, value = k, tokens, drafted, trial_value
        best = [min(best_k, cap) for cap in caps]
        # then per-request +-1 moves while they raise the modelled goodput
        tokens, drafted, passes = best_tokens, best_drafted, max(best)
        count_of = [best.count(k) for k in range(max(caps) + 2)]  # requests drafting k
        for _ in range(REFINE_SWEEPS):
            moved = False
            for i, cap in enumerate(caps):
                k_i = best[i]
                for k in (k_i + 1, k_i - 1):
                    if not 0 <= k <= cap:
                        continue
                    longest = k if k > passes else passes - 1 if k_i == passes and count_of[passes] == 1 else passes
                    trial_tokens = tokens + powers[i][k] if k > k_i else tokens - powers[i][k_i]
                    trial_value = trial_tokens / seconds(drafted + k - k_i, longest)
                    if trial_value > value * (1 + 1e-9):
                        best[i], tokens, drafted, value, moved = k, trial_tokens, drafted + k - k_i, trial_value, True
                        count_of[k_i] -= 1
                        count_of[k] += 1
                        passes = longest
                        break
            if not moved:
                break
        if not any(best):
            self._idle_choices += 1
            if self._idle_choices % EXPLORE_EVERY == 0:
                best = [min(1, cap) for cap in caps]
        self.typical_k = round(sum(best) / len(best))
        return best

    def observe(self, r: Request, k: int, accepted: int) -> None:
        r.acceptance.observe(accepted, k)
        self.acceptance.observe(accepted, k)
