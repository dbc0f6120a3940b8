"""The blocking client."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from specd.client import types
from specd.client.errors import SpecdClientError, from_rpc_error
from specd.client.retry import backoff_or_raise
from specd.proto import server as grpc_server
from specd.proto.v1 import serving_pb2, serving_pb2_grpc


class Stream:
    """An ongoing streamed generation: iterate for chunks; `cancel()` stops it and frees its KV cache."""

    def __init__(self, open_call: Callable[[], Any], retries: int) -> None:
        self._open = open_call  # starts the call: a grpc.Call that iterates over GenerateResponse
        self._retries = retries
        self._call: Any = None
        self._cancelled = False

    def __iter__(self) -> Iterator[types.Chunk]:
        received = False
        for attempt in itertools.count():
            self._call = self._open()
            try:
                for msg in self._call:
                    received = True
                    yield types.chunk(msg)
                return
            except grpc.RpcError as exc:
                time.sleep(backoff_or_raise(exc, attempt, self._retries, final=received or self._cancelled))
            finally:
                self._call.cancel()  # no-op once finished; otherwise tells the router to stop

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class Client:
    """Talks to a specd router. `with Client("localhost:50051") as c: print(c.generate("def ").text)`.

    timeout: default deadline in seconds for each call (None: no deadline); retries: how often a
    call that failed with UNAVAILABLE before producing anything is tried again.
    """

    def __init__(self, address: str, timeout: float | None = None, retries: int = 2) -> None:
        self._channel = grpc.insecure_channel(address, options=grpc_server.CHANNEL_OPTIONS)
        self._stub = serving_pb2_grpc.SpecdStub(self._channel)
        self.timeout = timeout
        self.retries = retries

    def generate(self, prompt: str | list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, speculation: bool = True,
                 max_k: int = 0, ignore_eos: bool = False, request_id: str = "",
                 timeout: float | None = None) -> types.Result:
        """Generate to the end and return the whole result (unary call)."""
        msg = types.request_message(prompt, max_new_tokens, temperature, top_p, top_k, seed, speculation, max_k,
                                    ignore_eos, request_id)
        for attempt in itertools.count():
            try:
                return types.result(self._stub.GenerateUnary(msg, timeout=timeout or self.timeout))
            except grpc.RpcError as exc:
                time.sleep(backoff_or_raise(exc, attempt, self.retries))
        raise AssertionError("unreachable")

    def stream(self, prompt: str | list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, speculation: bool = True,
               max_k: int = 0, ignore_eos: bool = False, request_id: str = "",
               timeout: float | None = None) -> Stream:
        """Stream the generation chunk by chunk; the deadline covers the whole stream."""
        msg = types.request_message(prompt, max_new_tokens, temperature, top_p, top_k, seed, speculation, max_k,
                                    ignore_eos, request_id)
        return Stream(lambda: self._stub.Generate(msg, timeout=timeout or self.timeout), self.retries)

    def stats(self, timeout: float | None = 10.0) -> types.RouterStats:
        """The router's live figures: acceptance, goodput, current k, queue."""
        try:
            return types.router_stats(self._stub.Stats(serving_pb2.RouterStatsRequest(), timeout=timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Client", "Stream", "SpecdClientError"]
