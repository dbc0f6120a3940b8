"""Free TCP ports on loopback, picked before the servers that take them bind: local mode's
workers and routers, a tensor-parallel group's rendezvous, the dev cluster's components."""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_ports(count: int) -> list[int]:
    """`count` ports nothing listened on at 127.0.0.1 a moment ago, and never one this process was
    handed before: the kernel may offer a port again until its server binds it (a local router
    alone takes three: gRPC, HTTP, metrics). A race with other programs remains possible but is
    short."""
    ports: list[int] = []
    with _lock:
        while len(ports) < count:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    return ports


def free_port() -> int:
    """One port, as `free_ports` picks them."""
    return free_ports(1)[0]
