"""Lossless acceptance of drafted tokens (Leviathan et al. 2023; Chen et al. 2023).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specd.worker.sampling import SamplingParams, gumbel_choice, probabilities, sample


@dataclass(frozen=True)
class Acceptance:
    accepted: int  # drafted tokens accepted
    tokens: list[int]  # the accepted drafted tokens followed by one correction or bonus token


def accept_matching(draft_tokens: list[int], choices: list[int]) -> Acceptance:
    """Accept drafts while they equal the target's own choices (k+1 of them), then emit its next."""
    accepted = 0
    while accepted < len(draft_tokens) and draft_tokens[accepted] == choices[accepted]:
        accepted += 1
    return Acceptance(accepted, draft_tokens[:accepted] + [choices[accepted]])


def accept_greedy(draft_tokens: list[int], target_logits: torch.Tensor) -> Acceptance:
    return accept_matching(draft_tokens, target_logits.argmax(-1).tolist())


def accept_sampled(draft_tokens: list[int], draft_probs: torch.Tensor, target_probs: torch.Tensor,
                   generator: torch.Generator) -> Acceptance:
    """draft_probs: [k, vocab]; target_probs: [k+1, vocab], both already transformed."""
    k = len(draft_tokens)
    if k:
        index = torch.tensor(draft_tokens).unsqueeze(1)
        p = target_probs[:k].gather(1, index).squeeze(1)
        q = draft_probs.gather(1, index).squeeze(1)
        u = torch.rand(k, generator=generator)
        # u < p/q, written without dividing by q (q > 0 for every drafted token)
        rejected = (u * q >= p).nonzero()
        if len(rejected):
            i = int(rejected[0])
            residual = (target_probs[i] - draft_probs[i]).clamp_min(0)
            total = residual.sum()
            # p == q exactly leaves no residual mass; then p itself is the right distribution
            dist = residual / total if total > 0 else target_probs[i]
            return Acceptance(i, draft_tokens[:i] + [int(sample(dist.unsqueeze(0), generator))])
    return Acceptance(k, draft_tokens + [int(sample(target_probs[k : k + 1], generator))])


def accept(draft_tokens: list[int], draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
           params: SamplingParams, generator: torch.Generator, position: int) -> Acceptance:
    """position: the sequence index of the first verified token (the committed length)."""
    if params.greedy:
        return accept_greedy(draft_tokens, target_logits)
    target_probs = probabilities(target_logits, params)
    if params.seed is not None:
        return accept_matching(draft_tokens, gumbel_choice(target_probs, params.seed, position))
    if draft_probs is None:
        draft_probs = target_probs.new_zeros(0, target_probs.shape[-1])
    return accept_sampled(draft_tokens, draft_probs, target_probs, generator)
