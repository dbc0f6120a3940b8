"""Prometheus /metrics on a port of its own, for the router and every worker (prometheus_client's
own HTTP server, on a daemon thread: a scrape never waits for the event loop or the model)."""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


@dataclass
class MetricsServer:
    port: int
    _server: WSGIServer
    _thread: Thread

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> "MetricsServer":
        """port 0: any free port (`.port` says which)."""
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server.server_port, server, thread)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
