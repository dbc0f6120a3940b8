"""The asyncio client: the same calls as `Client`, awaitable."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc

from specd.client import types
from specd.client.errors import from_rpc_error
from specd.client.retry import backoff_or_raise
from specd.proto import server as grpc_server
from specd.proto.v1 import serving_pb2, serving_pb2_grpc


class AsyncClient:
    """`async with AsyncClient("localhost:50051") as c: result = await c.generate("def ")`.

    Cancelling the task that iterates `stream(...)` (or leaving the loop and closing the
    iterator) cancels the call, and the router frees the request's KV caches.
    """

    def __init__(self, address: str, timeout: float | None = None, retries: int = 2) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=grpc_server.CHANNEL_OPTIONS)
        self._stub = serving_pb2_grpc.SpecdStub(self._channel)
        self.timeout = timeout
        self.retries = retries

    async def generate(self, prompt: str | list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
                       top_p: float = 1.0, top_k: int = 0, seed: int | None = None, speculation: bool = True,
                       max_k: int = 0, ignore_eos: bool = False, request_id: str = "",
                       timeout: float | None = None) -> types.Result:
        msg = types.request_message(prompt, max_new_tokens, temperature, top_p, top_k, seed, speculation, max_k,
                                    ignore_eos, request_id)
        for attempt in itertools.count():
            try:
                return types.result(await self._stub.GenerateUnary(msg, timeout=timeout or self.timeout))
            except grpc.RpcError as exc:
                await asyncio.sleep(backoff_or_raise(exc, attempt, self.retries))
        raise AssertionError("unreachable")

    async def stream(self, prompt: str | list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
                     top_p: float = 1.0, top_k: int = 0, seed: int | None = None, speculation: bool = True,
                     max_k: int = 0, ignore_eos: bool = False, request_id: str = "",
                     timeout: float | None = None) -> AsyncIterator[types.Chunk]:
        msg = types.request_message(prompt, max_new_tokens, temperature, top_p, top_k, seed, speculation, max_k,
                                    ignore_eos, request_id)
        received = False
        for attempt in itertools.count():
            call = self._stub.Generate(msg, timeout=timeout or self.timeout)
            try:
                async for reply in call:
                    received = True
                    yield types.chunk(reply)
                return
            except grpc.RpcError as exc:
                await asyncio.sleep(backoff_or_raise(exc, attempt, self.retries, final=received))
            finally:
                call.cancel()  # no-op once finished; otherwise the router stops and frees the KV cache

    async def stats(self, timeout: float | None = 10.0) -> types.RouterStats:
        """The router's live figures: acceptance, goodput, current k, queue."""
        try:
            return types.router_stats(await self._stub.Stats(serving_pb2.RouterStatsRequest(), timeout=timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
