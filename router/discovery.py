"""Static worker discovery: fixed address lists, with the same protocol as the Kubernetes watcher.

Protocol (see k8s_discovery.EndpointSliceWatcher): current() -> {role: ["host:port"]},
subscribe(callback), start(), stop(). The router calls start() and stop() on its event loop;
callbacks may come from any thread (the router hands them to its loop thread-safely).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

Endpoints = dict[str, list[str]]


class Discovery(Protocol):
    def current(self) -> Endpoints: ...

    def subscribe(self, callback: Callable[[Endpoints], None]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class StaticDiscovery:
    def __init__(self, targets: Iterable[str], drafts: Iterable[str] = ()) -> None:
        self._endpoints: Endpoints = {"target": list(targets), "draft": list(drafts)}

    def current(self) -> Endpoints:
        return {role: list(addresses) for role, addresses in self._endpoints.items()}

    def subscribe(self, callback: Callable[[Endpoints], None]) -> None:
        """Static lists never change: the callback is never called."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
