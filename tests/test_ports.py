"""specd.ports: the one free-port helper of local mode, tensor parallelism and the dev cluster."""

from __future__ import annotations

import socket
import threading

from specd.ports import LOOPBACK, free_port, free_ports


def test_no_port_is_handed_out_twice_in_a_process():
    ports = free_ports(50) + [free_port() for _ in range(250)]
    assert len(ports) == 300 and len(set(ports)) == len(ports)


def test_no_port_is_handed_out_twice_across_threads():
    picked: list[list[int]] = []
    threads = [threading.Thread(target=lambda: picked.append(free_ports(40))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ports = [port for batch in picked for port in batch]
    assert len(ports) == 160 and len(set(ports)) == len(ports)


def test_the_ports_can_be_bound_on_loopback():
    for port in free_ports(3):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, port))
