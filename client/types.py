"""What the SDK returns: plain dataclasses, not protobuf messages."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from specd.proto.v1 import common_pb2, serving_pb2

FINISH_REASONS = {serving_pb2.FINISH_REASON_LENGTH: "length", serving_pb2.FINISH_REASON_EOS: "eos"}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    draft_tokens_proposed: int
    draft_tokens_accepted: int
    iterations: int

    @property
    def accepted_fraction_of_proposed(self) -> float:
        """Drafted tokens accepted / drafted tokens. Not the acceptance rate α (the probability that a
        verified draft is accepted): drafts after a rejection count here as not accepted."""
        return self.draft_tokens_accepted / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Deprecated: the name said α, the figure is `accepted_fraction_of_proposed`."""
        warnings.warn("Usage.acceptance_rate is accepted_fraction_of_proposed (not the acceptance rate α); "
                      "use that name", DeprecationWarning, stacklevel=2)
        return self.accepted_fraction_of_proposed


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    ttft_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class Chunk:
    """One streamed message: a text delta; the last one has finish_reason, usage and timing."""

    text: str
    tokens: list[int]
    finish_reason: str | None = None  # "length" | "eos" on the last chunk
    usage: Usage | None = None
    timing: Timing | None = None


@dataclass(frozen=True)
class Result:
    text: str
    tokens: list[int]
    finish_reason: str | None
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class RouterStats:
    """Live figures of a router (`Client.stats()`)."""

    acceptance_rate: float | None  # None until drafts were verified
    goodput_tokens_per_s: float  # tokens streamed per second over the last minute
    current_k: int
    queued_requests: int
    running_requests: int
    finished_requests: int
    live_targets: int
    live_drafts: int
    policy: str
    speculation: str
    # the last minute's figures the autoscaler decides on (docs/autoscaling.md)
    speculating_fraction: float  # share of request-iterations that drafted (k > 0)
    drafted_tokens_per_s: float
    draft_busy_fraction: float  # mean share of the time a live draft replica spent drafting
    mean_ttft_s: float  # 0 while no first token came
    mean_tpot_s: float  # 0 while no request finished


def router_stats(msg: serving_pb2.RouterStats) -> RouterStats:
    return RouterStats(msg.acceptance_rate if msg.drafted_tokens else None, msg.goodput_tokens_per_s, msg.current_k,
                       msg.queued_requests, msg.running_requests, msg.finished_requests, msg.live_targets,
                       msg.live_drafts, msg.policy, msg.speculation, msg.speculating_fraction,
                       msg.drafted_tokens_per_s, msg.draft_busy_fraction, msg.mean_ttft_s, msg.mean_tpot_s)


def request_message(prompt: str | list[int], max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                    seed: int | None, speculation: bool, max_k: int, ignore_eos: bool,
                    request_id: str) -> serving_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    if seed is not None:
        sampling.seed = seed
    msg = serving_pb2.GenerateRequest(max_new_tokens=max_new_tokens, sampling=sampling, ignore_eos=ignore_eos,
                                      request_id=request_id,
                                      speculation=serving_pb2.SpeculationControl(disabled=not speculation, max_k=max_k))
    if isinstance(prompt, str):
        msg.prompt = prompt
    else:
        msg.prompt_tokens.extend(prompt)
    return msg


def _usage(msg: serving_pb2.Usage) -> Usage:
    return Usage(msg.prompt_tokens, msg.generated_tokens, msg.draft_tokens_proposed, msg.draft_tokens_accepted,
                 msg.iterations)


def _timing(msg: serving_pb2.Timing) -> Timing:
    return Timing(msg.queue_seconds, msg.ttft_seconds, msg.total_seconds)


def chunk(msg: serving_pb2.GenerateResponse) -> Chunk:
    if msg.finish_reason:
        return Chunk(msg.text, list(msg.tokens), FINISH_REASONS.get(msg.finish_reason), _usage(msg.usage),
                     _timing(msg.timing))
    return Chunk(msg.text, list(msg.tokens))


def result(msg: serving_pb2.GenerateResult) -> Result:
    return Result(msg.text, list(msg.tokens), FINISH_REASONS.get(msg.finish_reason), _usage(msg.usage),
                  _timing(msg.timing))
