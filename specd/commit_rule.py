"""The rule the engine (worker/engine.py) and the router (router/decisions.py,
router/speculation.py) both apply to a verification's tokens, and the draft length it allows."""

from __future__ import annotations


def draft_cap(k: int, remaining: int) -> int:
    """Drafts a request may take with `remaining` tokens left to generate: verification emits one
    token more (the correction or the bonus), so k + 1 must fit."""
    return max(0, min(k, remaining - 1))


def cut(tokens: list[int], remaining: int, stop_token: int | None) -> tuple[list[int], bool]:
    """The tokens to commit: at most `remaining`, ending before the stop token (not committed); and
    whether the stop token came."""
    tokens = tokens[:remaining]
    if stop_token is not None and stop_token in tokens:
        return tokens[: tokens.index(stop_token)], True
    return tokens, False
