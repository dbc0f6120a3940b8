"""When the SDK tries a failed call again: the one rule both clients (blocking and asyncio) share.

A call is tried again only when it failed with UNAVAILABLE (no router reachable, or no worker left
to serve) before it produced anything: the request had no effect yet, so sending it again is safe.
Once a stream has yielded a chunk, or its caller cancelled it, a failure is final.

Not gRPC's own `retryPolicy` (service config), though it has the same "until the first response"
rule: gRPC caps a policy at 5 attempts, jitters its backoff, and lets the deadline span all
attempts, while `retries` here may be any number, the backoff is fixed and every attempt gets the
call's whole timeout.
"""

from __future__ import annotations

import grpc

from specd.client.errors import Unavailable, from_rpc_error

RETRY_BACKOFF_S = (0.2, 0.5, 1.0)  # the wait before the 1st, 2nd, 3rd and later tries again


def backoff_or_raise(exc: grpc.RpcError, attempt: int, retries: int, *, final: bool = False) -> float:
    """Seconds to wait before trying again the call whose attempt number `attempt` (0: the first)
    failed with `exc`; raises exc as the SDK's error (client/errors.py) instead when the call must
    not be tried again: not UNAVAILABLE, `retries` tries again used up, or `final` (the stream
    produced output or was cancelled)."""
    error = from_rpc_error(exc)
    if final or not isinstance(error, Unavailable) or attempt >= retries:
        raise error from None
    return RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
