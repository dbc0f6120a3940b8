"""Lossless acceptance of drafted tokens (Leviathan et al. 2023; Chen et al. 2023), batched.

Given k drafted tokens with the draft's distributions q_1..q_k and the target's distributions
p_1..p_{k+1} from one verification pass, accept x_i with probability min(1, p_i(x_i)/q_i(x_i));
at the first rejection emit y ~ normalize(max(0, p_i - q_i)); if all k pass, emit a bonus
token y ~ p_{k+1}. The emitted sequence is distributed exactly as sampling from p alone.
Greedy decoding is the limit: accept while x_i == argmax p_i, then emit argmax p.

Seeded requests use the Gumbel-max coupling instead: the draft proposed x_i = argmax(log q_i +
G_i) and the target's token is y_i = argmax(log p_i + G_i) with the same noise G_i of that
position; accept while x_i == y_i, then emit y_i. Each y_i is an exact sample of p_i, and it does
not depend on k, so a seed reproduces its output under any speculation length. The price is a
lower acceptance than the rejection rule's sum of min(p, q) (measured in the session notes).

`accept_batch` runs every request of a verification pass at once on the runner's device, in the
packed layout of the pass (request i's k_i + 1 rows one after the other, no padding), and reads
back one small tensor: the accepted count and the emitted token of each request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specd.worker.device import to_device
from specd.worker.sampling import Rows, SamplingParams, Stream, choose, row_probabilities, uniform


@dataclass(frozen=True)
class Acceptance:
    accepted: int  # drafted tokens accepted
    tokens: list[int]  # the accepted drafted tokens followed by one correction or bonus token


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[n, vocab] -> normalize(max(0, p - q)) per row: what to sample after rejecting a draft from q
    (q = 0 for a bonus row gives p itself). p == q exactly leaves no mass; then p is right."""
    mass = (p - q).clamp_min(0)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), p)


def accept_batch(drafts: list[list[int]], draft_probs: list[torch.Tensor | None], logits: list[torch.Tensor],
                 params: list[SamplingParams], seeds: list[int], positions: list[int],
                 tentative: bool = False) -> list[Acceptance]:
    """Request i: drafts[i] (k_i tokens), draft_probs[i] [k_i, vocab] (None when greedy or coupled),
    logits[i] [k_i + 1, vocab] of the target, noise seed and the position of its first verified
    token. tentative: HiSpec's intermediate verifier (streams of its own for unseeded requests)."""
    if not drafts:
        return []
    device = logits[0].device
    counts = [len(d) + 1 for d in drafts]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    target = torch.cat(logits)  # [R, vocab]
    draft_col = to_device([t for d in drafts for t in d + [-1]], torch.int64, device)  # -1 on bonus rows
    offset_in_request = to_device([j for n in counts for j in range(n)], torch.int64, device)
    request_of_row = to_device([i for i, n in enumerate(counts) for _ in range(n)], torch.int64, device)

    sampled: list[int] = []  # requests that sample
    sampled_rows: list[int] = []  # their rows in the pass
    rejection: list[int] = []  # the unseeded ones among them (the rejection rule)
    rejection_rows: list[int] = []  # their rows in the pass
    rejection_local: list[int] = []  # their rows among the sampled rows (in `probs`)
    for i, param in enumerate(params):
        if not param.greedy:
            request_rows = list(range(starts[i], starts[i] + counts[i]))
            if not param.coupled:
                rejection.append(i)
                rejection_rows += request_rows
                rejection_local += range(len(sampled_rows), len(sampled_rows) + counts[i])
            sampled.append(i)
            sampled_rows += request_rows

    # the target's own choice per row: argmax, or the coupled Gumbel-max sample
    choice = target.argmax(-1)
    if sampled:
        rows = Rows.build([params[i] for i in sampled], [seeds[i] for i in sampled],
                          [positions[i] for i in sampled], [counts[i] for i in sampled], device)
        at = to_device(sampled_rows, torch.int64, device)
        probs = row_probabilities(target[at], rows)
        coupled_choice = choose(probs, rows.seed, rows.position, int(Stream.COUPLED))
        choice[at] = torch.where(rows.coupled, coupled_choice, choice[at])
    ok = draft_col == choice  # the matching rule (greedy, coupled); bonus rows never match

    if rejection:
        local = to_device(rejection_local, torch.int64, device)
        p, seed, position = probs[local], rows.seed[local], rows.position[local]
        bonus_row = p.new_zeros(1, p.shape[-1])  # q = 0 where no draft was made: residual(p, 0) = p
        q = torch.cat([torch.cat([_probs_of(draft_probs[i], i).to(device=p.device, dtype=p.dtype), bonus_row])
                       if drafts[i] else bonus_row for i in rejection])
        at = to_device(rejection_rows, torch.int64, device)
        x = draft_col[at]
        u = uniform(seed, position, int(Stream.TENTATIVE_ACCEPT if tentative else Stream.ACCEPT), 1).squeeze(1)
        index = x.clamp_min(0).unsqueeze(1)
        # u < p/q, written without dividing by q (q > 0 for every drafted token)
        ok[at] = (u * q.gather(1, index).squeeze(1) < p.gather(1, index).squeeze(1)) & (x >= 0)

    # accepted per request: the offset of its first row that fails (the bonus row always does)
    never = max(counts)
    accepted = torch.full((len(drafts),), never, dtype=torch.int64, device=device).scatter_reduce(
        0, request_of_row, torch.where(ok, never, offset_in_request), reduce="amin")
    first_rows = to_device(starts, torch.int64, device)
    emitted = choice[first_rows + accepted]
    if rejection:
        firsts: list[int] = []
        n = 0
        for i in rejection:
            firsts.append(n)
            n += counts[i]
        which = to_device(rejection, torch.int64, device)
        at = to_device(firsts, torch.int64, device) + accepted[which]  # the correction (or bonus) row in p and q
        stream = Stream.TENTATIVE_RESIDUAL if tentative else Stream.RESIDUAL
        emitted[which] = choose(residual(p[at], q[at]), seed[at], position[at], int(stream))
    accepted_host, emitted_host = torch.stack([accepted, emitted]).tolist()  # the one read-back of the pass
    return [Acceptance(n, d[:n] + [token]) for d, n, token in zip(drafts, accepted_host, emitted_host)]


def _probs_of(draft_probs: torch.Tensor | None, request: int) -> torch.Tensor:
    if draft_probs is None:
        raise ValueError(f"request {request}: unseeded sampled drafts need their distributions q")
    return draft_probs
