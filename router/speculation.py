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
    """seconds = base + per_token * tokens, least squares with exponential forgetting."""

    base: float
    per_token: float
    decay: float = 0.98
    _n: float = 0.0
    _sx: float = 0.0
    _sy: float = 0.0
    _sxx: float = 0.0
    _sxy: float = 0.0

    def add(self, tokens: float, seconds: float) -> None:
        d = self.decay
        self._n = d * self._n + 1
        self._sx = d * self._sx + tokens
        self._sy = d * self._sy + seconds
        self._sxx = d * self._sxx + tokens * tokens
        self._sxy = d * self._sxy + tokens * seconds
        mx, my = self._sx / self._n, self._sy / self._n
        var = self._sxx / self._n - mx * mx
        if var > 1e-9 * max(1.0, mx * mx):
            self.per_token = max((self._sxy / self._n - mx * my) / var, 0.0)
        elif mx > 0 and self.base + self.per_token * mx > 0:
            # one size seen so far: scale the current line to pass through it
            scale = my / (self.base + self.per_token * mx)
            self.base, self.per_token = self.base * scale, self.per_token * scale
            return
        self.base = max(my - self.per_token * mx, 0.0)

    def __call__(self, tokens: float) -> float:
        return self.base + self.per_token * tokens


@dataclass
class CostModel:
    """Time of one iteration, from the workers' measured pass times plus the measured RPC overhead."""

    target_pass: LinearFit = field(default_factory=lambda: LinearFit(0.005, 0.0005))
    draft_pass: LinearFit = field(default_factory=lambda: LinearFit(0.001, 0.0002))
    target_overhead: float = 0.001  # round trip minus the worker's compute time (EMA)
    draft_overhead: float = 0.001

    def observe_target(self, tokens: int, compute_s: float, round_trip_s: float) -> None:
        self.target_pass.add(tokens, compute_s)
        self.target_overhead = 0.9 * self.target_overhead + 0.1 * max(round_trip_s - compute_s, 0.0)

    def observe_draft(self, tokens_per_pass: float, passes: int, compute_s: float, round_trip_s: float) -> None:
        if passes:
            self.draft_pass.add(tokens_per_pass, compute_s / passes)
        self.draft_overhead = 0.9 * self.draft_overhead + 0.1 * max(round_trip_s - compute_s, 0.0)

    def iteration(self, ks: list[int], overlapped: bool = False) -> float:
        """Seconds of one iteration in which request i drafts ks[i] tokens.

        overlapped: another batch is in flight on the same target (the two-lane pipeline), so this
        batch's drafting runs while the target verifies the other one; the target then waits for
        drafts only when drafting takes longer than verifying.
        """
        return self.iteration_of(len(ks), sum(ks), max(ks, default=0), overlapped)

    def iteration_of(self, requests: int, drafted: int, passes: int, overlapped: bool = False) -> float:
        """`iteration` from the batch's size, its total drafts and its longest draft."""
        return self.timer(requests, overlapped)(drafted, passes)

    def timer(self, requests: int, overlapped: bool = False) -> Callable[[int, int], float]:
        """(drafted, passes) -> seconds of an iteration of `requests` requests that draft `drafted`
        tokens in all, the longest `passes` of them; all the time depends on, as pass j feeds every
        request still drafting at step j: the passes feed `drafted` tokens. (A closure over the
        current fits: SpeculationControl.choose calls it hundreds of times per decision.)"""
        t_base = self.target_pass.base + self.target_pass.per_token * requests + self.target_overhead
        t_token, d_base, d_token = self.target_pass.per_token, self.draft_pass.base, self.draft_pass.per_token
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
        seconds = self.costs.timer(len(batch), overlapped)
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
