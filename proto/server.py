"""Plumbing every specd gRPC server shares: health checking, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

# Generous: generated messages (draft probabilities, tokenizer.json) exceed gRPC's 4 MiB default.
MESSAGE_LIMIT = 256 * 2**20
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MESSAGE_LIMIT),
                   ("grpc.max_receive_message_length", MESSAGE_LIMIT)]


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=CHANNEL_OPTIONS)


def add_standard_services(server: grpc.aio.Server, service_names: list[str]) -> health.aio.HealthServicer:
    """Register grpc.health.v1 (overall and per service: SERVING) and server reflection."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Listen on host:port (port 0 picks a free one); returns the port."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return bound


@dataclass
class RunningServer:
    """A started server; `stop` drains it: NOT_SERVING, then `drain()`, then the gRPC grace period."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    drain: Callable[[], Awaitable[None]] | None = None

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self.drain is not None:
            try:
                await asyncio.wait_for(self.drain(), grace_s)
            except asyncio.TimeoutError:
                log.warning("drain did not finish within %.0fs", grace_s)
        await self.server.stop(grace_s)


async def start(server: grpc.aio.Server, service_names: list[str], host: str, port: int,
                drain: Callable[[], Awaitable[None]] | None = None) -> RunningServer:
    """Add health and reflection, listen, start, and report SERVING."""
    servicer = add_standard_services(server, service_names)
    bound = bind(server, host, port)
    await server.start()
    await mark_serving(servicer, service_names)
    return RunningServer(server, servicer, bound, drain)


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT (main thread only)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
