"""Typed errors of the client SDK, one per gRPC status a caller may want to handle differently."""

from __future__ import annotations

import grpc


class SpecdClientError(Exception):
    """A call to a specd router failed; `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequest(SpecdClientError):
    """INVALID_ARGUMENT: the message names the offending field (e.g. `max_new_tokens: ...`)."""


class Overloaded(SpecdClientError):
    """RESOURCE_EXHAUSTED: the router's queue is full; try later or elsewhere."""


class Unavailable(SpecdClientError):
    """UNAVAILABLE: no router, or no worker left to serve the request."""


class DeadlineExceeded(SpecdClientError):
    """The call's deadline passed before the generation finished."""


class Cancelled(SpecdClientError):
    """The call was cancelled."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError) -> SpecdClientError:
    code = error.code()
    return _BY_CODE.get(code, SpecdClientError)(code, error.details() or "")
