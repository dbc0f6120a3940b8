"""Plumbing every specd gRPC server shares: health checking, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

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


async def serve_until_signal(server: grpc.aio.Server, servicer: health.aio.HealthServicer, grace_s: float,
                             drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: report NOT_SERVING, finish what runs, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (grace %.0fs)", grace_s)
    await servicer.enter_graceful_shutdown()
    if drain is not None:
        try:
            await asyncio.wait_for(drain(), grace_s)
        except asyncio.TimeoutError:
            log.warning("drain did not finish within %.0fs", grace_s)
    await server.stop(grace_s)
