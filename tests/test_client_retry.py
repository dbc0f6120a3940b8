"""The SDK's one retry rule (client/retry.py) and both clients following it against a scripted
router: UNAVAILABLE before any output is tried again after the backoff, anything else is final."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from specd.client import AsyncClient, Client, InvalidRequest, Overloaded, Unavailable, retry
from specd.proto.v1 import serving_pb2, serving_pb2_grpc


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no worker")


def test_unavailable_is_tried_again_after_the_backoff():
    assert [retry.backoff_or_raise(UNAVAILABLE, a, retries=5) for a in range(5)] == [0.2, 0.5, 1.0, 1.0, 1.0]


def test_a_failure_is_final_after_the_retries_or_output_or_for_another_code():
    with pytest.raises(Unavailable) as err:
        retry.backoff_or_raise(UNAVAILABLE, 2, retries=2)
    assert err.value.details == "no worker" and err.value.__suppress_context__
    with pytest.raises(Unavailable):
        retry.backoff_or_raise(UNAVAILABLE, 0, retries=0)
    with pytest.raises(Unavailable):
        retry.backoff_or_raise(UNAVAILABLE, 0, retries=2, final=True)  # the stream had produced output
    with pytest.raises(InvalidRequest):
        retry.backoff_or_raise(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "prompt: empty"), 0, retries=2)
    with pytest.raises(Overloaded):
        retry.backoff_or_raise(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED), 0, retries=2)


class ScriptedRouter(serving_pb2_grpc.SpecdServicer):
    """Fails the first `failures` calls with `code` before any output; then streams two chunks,
    aborting with UNAVAILABLE after the first one when `break_stream`."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.break_stream = False

    def _answer(self, context: grpc.ServicerContext) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, f"attempt {self.calls} refused")

    def GenerateUnary(self, request: Any, context: grpc.ServicerContext) -> serving_pb2.GenerateResult:
        self._answer(context)
        return serving_pb2.GenerateResult(text="ok", tokens=[1, 2], finish_reason=serving_pb2.FINISH_REASON_LENGTH)

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Iterator[serving_pb2.GenerateResponse]:
        self._answer(context)
        yield serving_pb2.GenerateResponse(text="o", tokens=[1])
        if self.break_stream:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the worker went away")
        yield serving_pb2.GenerateResponse(text="k", tokens=[2], finish_reason=serving_pb2.FINISH_REASON_LENGTH)


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ScriptedRouter, str]]:
    monkeypatch.setattr(retry, "RETRY_BACKOFF_S", (0.01,))
    servicer = ScriptedRouter()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    serving_pb2_grpc.add_SpecdServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def _generate_both_ways(address: str) -> tuple[str, str]:
    with Client(address, retries=2) as client:
        unary = client.generate("x").text
    with Client(address, retries=2) as client:
        streamed = "".join(chunk.text for chunk in client.stream("x"))
    return unary, streamed


async def _agenerate_both_ways(address: str) -> tuple[str, str]:
    async with AsyncClient(address, retries=2) as client:
        unary = (await client.generate("x")).text
    async with AsyncClient(address, retries=2) as client:
        streamed = "".join([chunk.text async for chunk in client.stream("x")])
    return unary, streamed


@pytest.mark.parametrize("run", [_generate_both_ways, lambda a: asyncio.run(_agenerate_both_ways(a))],
                         ids=["sync", "aio"])
def test_both_clients_try_again_until_the_retries_are_used_up(router, run):
    servicer, address = router
    servicer.failures = 2  # the unary call is refused twice, then the stream's first call succeeds
    assert run(address) == ("ok", "ok")
    assert servicer.calls == 4
    servicer.calls, servicer.failures = 0, 3  # one refusal more than retries=2 allows
    with pytest.raises(Unavailable):
        run(address)
    assert servicer.calls == 3


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_a_stream_that_produced_output_or_another_code_is_not_tried_again(router, aio):
    servicer, address = router

    async def astream() -> list[str]:
        async with AsyncClient(address, retries=2) as client:
            return [chunk.text async for chunk in client.stream("x")]

    def stream() -> list[str]:
        if aio:
            return asyncio.run(astream())
        with Client(address, retries=2) as client:
            return [chunk.text for chunk in client.stream("x")]

    servicer.break_stream = True
    with pytest.raises(Unavailable):
        stream()
    assert servicer.calls == 1
    servicer.calls, servicer.break_stream, servicer.failures = 0, False, 1
    servicer.code = grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(Overloaded):
        stream()
    assert servicer.calls == 1
