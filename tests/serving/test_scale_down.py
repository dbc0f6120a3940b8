"""Scale-down as Kubernetes does it, on real worker processes under load: the leaving pod gets
SIGTERM and, at about the same time (here: a little later, the worst case), its endpoint leaves
the router's discovered set. A leaving target's requests move to another target at an iteration
boundary (re-prefilled from their committed tokens); a leaving draft's requests are re-pinned to
another draft, or run with k = 0 when none is left. The worker keeps answering until the router
has stopped calling it, then exits by itself: no request fails, greedy outputs equal plain
decoding, and the router never sees a failed call (which would mean a refused iteration)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from serving_support import PROMPTS, Endpoints, assert_released

from specd.client import Client
from specd.ports import LOOPBACK, free_port
from specd.proto.v1 import worker_pb2, worker_pb2_grpc
from specd.router.config import RouterConfig
from specd.router.local import LocalStack, Process

N = 160  # tokens per stream: long enough that every stream outlives the scale-down
LONG = 440  # and outlives a 3 s grace period (the models' context is 512)
PROPAGATION_S = 0.5  # SIGTERM comes first, the endpoint change this much later
EXIT_S = 20.0  # a drained worker exits within this (far below its 30 s grace)


def stack_of(models, log_dir, targets: int, drafts: int) -> Iterator[LocalStack]:
    target, draft = models
    stack = LocalStack()
    try:
        for _ in range(targets):
            stack.start_worker("target", target, log_dir=log_dir)
        for _ in range(drafts):
            stack.start_worker("draft", draft, log_dir=log_dir)
        for worker in stack.workers:
            stack.wait_serving(worker, 120)
        yield stack
    finally:
        stack.stop(grace_s=5)


@pytest.fixture
def two_targets(models, tmp_path):
    yield from stack_of(models, tmp_path, targets=2, drafts=1)


@pytest.fixture
def two_drafts(models, tmp_path):
    yield from stack_of(models, tmp_path, targets=1, drafts=2)


@pytest.fixture
def router(loop):
    """router(config, discovery) -> address of an in-process router; stopped after the test."""
    from specd.router.service import start_router

    started = []

    def make(config: RouterConfig, discovery: Endpoints) -> str:
        started.append(loop.run(start_router(config, discovery, ready_timeout_s=30)))
        return f"127.0.0.1:{started[-1].port}"

    yield make
    for running in started:
        loop.run(running.stop(grace_s=1))


def active_requests(worker: Process) -> int:
    with grpc.insecure_channel(worker.address) as channel:
        stub = (worker_pb2_grpc.TargetWorkerStub if worker.name.startswith("target")
                else worker_pb2_grpc.DraftWorkerStub)(channel)
        return stub.Stats(worker_pb2.StatsRequest(), timeout=5).active_requests


class Load:
    """`streams` concurrent greedy streams of N tokens; `started` once each has its first tokens."""

    def __init__(self, address: str, streams: int, tokens: int = N) -> None:
        self.address, self.tokens = address, tokens
        self.started = threading.Barrier(streams + 1, timeout=120)
        self.outputs: dict[int, list[int]] = {}
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._stream, args=(i,)) for i in range(streams)]
        for thread in self.threads:
            thread.start()
        self.started.wait()

    def _stream(self, slot: int) -> None:
        tokens: list[int] = []
        try:
            with Client(self.address, timeout=180) as client:
                for chunk in client.stream(PROMPTS[slot], self.tokens, ignore_eos=True):
                    if not tokens:
                        self.started.wait()
                    tokens += chunk.tokens
        except BaseException as exc:  # reported by finish(): a failed request fails the test
            self.errors.append(exc)
        self.outputs[slot] = tokens

    def finish(self) -> dict[int, list[int]]:
        for thread in self.threads:
            thread.join(240)
        assert not self.errors, self.errors
        return self.outputs


def scale_down(worker: Process, discovery: Endpoints, role: str) -> None:
    """What a Deployment's scale-down does to one pod: SIGTERM, then its endpoint leaves."""
    worker.popen.send_signal(signal.SIGTERM)
    time.sleep(PROPAGATION_S)  # the router still calls it meanwhile: the worker must answer
    discovery.remove(role, worker.address)


def assert_drained(worker: Process, log_dir) -> None:
    """The worker exited by itself, cleanly, having drained (not cut off at its grace period)."""
    assert worker.popen.wait(EXIT_S) == 0
    assert "worker drained in" in (log_dir / f"{worker.name}.log").read_text()


def test_a_leaving_target_moves_its_requests_without_losing_a_token(two_targets, router, reference, tokenizer,
                                                                      tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="specd.router")
    targets, drafts = two_targets.addresses("target"), two_targets.addresses("draft")
    discovery = Endpoints(targets, drafts)
    address = router(RouterConfig(policy="fcfs").with_speculation("fixed:2"), discovery)
    load = Load(address, streams=6)
    victim = next(w for w in two_targets.workers if w.name == "target-0")
    assert active_requests(victim) > 0  # placement spread the streams: the victim holds some
    scale_down(victim, discovery, "target")
    outputs = load.finish()
    assert outputs == {i: reference(tokenizer.encode(PROMPTS[i]), N) for i in range(6)}
    assert_drained(victim, tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("moves to target" in m for m in messages)
    assert not any(" is down" in m for m in messages), [m for m in messages if " is down" in m]
    with Client(address) as client:  # the remaining target serves new requests
        assert client.stats().live_targets == 1
        assert client.generate(PROMPTS[6], 12, ignore_eos=True).tokens == reference(
            tokenizer.encode(PROMPTS[6]), 12)


def test_a_worker_the_router_keeps_calling_stops_at_its_grace_period(models, router, reference, tokenizer,
                                                                      tmp_path):
    """Without discovery (fixed addresses) the router never stops calling a worker that got
    SIGTERM: the worker answers for its --grace seconds, then stops, and the router moves the
    streams to the other target (a failed call, the failover path): still no token lost."""
    target = models[0]
    stack = LocalStack()
    try:
        port = free_port()
        with open(tmp_path / "graceful.log", "ab") as log:  # a worker with a short grace period
            popen = subprocess.Popen([sys.executable, "-m", "specd.cli", "worker", "--role", "target", "--model",
                                      str(target), "--host", LOOPBACK, "--port", str(port), "--grace", "3"],
                                     stdout=log, stderr=log, start_new_session=True)
        victim = Process("target-graceful", f"{LOOPBACK}:{port}", popen)
        stack.workers.append(victim)  # stopped with the stack
        stack.start_worker("target", target, log_dir=tmp_path)
        for worker in stack.workers:
            stack.wait_serving(worker, 120)
        discovery = Endpoints(stack.addresses("target"), [])
        address = router(RouterConfig(policy="fcfs").with_speculation("none"), discovery)
        load = Load(address, streams=4, tokens=LONG)
        assert active_requests(victim) > 0
        victim.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert victim.popen.wait(EXIT_S) == 0
        assert 3 <= time.monotonic() - signalled  # it kept answering for its whole grace period
        assert load.finish() == {i: reference(tokenizer.encode(PROMPTS[i]), LONG) for i in range(4)}
    finally:
        stack.stop(grace_s=5)


def test_leaving_drafts_repin_their_requests_then_k_is_zero(two_drafts, router, reference, tokenizer, tmp_path,
                                                             caplog):
    caplog.set_level(logging.INFO, logger="specd.router")
    targets, drafts = two_drafts.addresses("target"), two_drafts.addresses("draft")
    discovery = Endpoints(targets, drafts)
    address = router(RouterConfig(policy="fcfs").with_speculation("fixed:3"), discovery)
    load = Load(address, streams=4)
    first, second = (w for w in two_drafts.workers if w.name.startswith("draft"))
    assert active_requests(first) > 0 and active_requests(second) > 0  # the streams draft on both
    scale_down(first, discovery, "draft")
    deadline = time.monotonic() + 10  # every stream drafts on the remaining draft within a few iterations
    while active_requests(second) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_requests(second) == 4
    scale_down(second, discovery, "draft")  # no draft left: k = 0, the streams go on
    outputs = load.finish()
    assert outputs == {i: reference(tokenizer.encode(PROMPTS[i]), N) for i in range(4)}
    assert_drained(first, tmp_path)
    assert_drained(second, tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert not any(" is down" in m for m in messages), [m for m in messages if " is down" in m]
    with Client(address) as client:
        result = client.generate(PROMPTS[5], 12, ignore_eos=True)
    assert result.tokens == reference(tokenizer.encode(PROMPTS[5]), 12)
    assert result.usage.draft_tokens_proposed == 0


def test_a_target_back_after_a_drop_releases_the_caches_of_requests_that_moved(worker_pool, router, models,
                                                                               reference, tokenizer):
    """An endpoint that leaves and comes back (a readiness flap, not a deletion): the request it
    held moved to the other target, so its cache on the returning worker is released before that
    worker serves again (else it would hold the memory until it restarts)."""
    addresses = {name: worker_pool.start(name, "target", models[0]) for name in ("a", "b")}
    cores = worker_pool.cores
    discovery = Endpoints(list(addresses.values()), [])
    address = router(RouterConfig(policy="fcfs").with_speculation("none"), discovery)
    tokens: list[int] = []
    with Client(address, timeout=60) as client:
        for chunk in client.stream(PROMPTS[0], N, ignore_eos=True):
            if not tokens:
                holder, other = ("a", "b") if cores["a"].mirrors else ("b", "a")
                discovery.remove("target", addresses[holder])
                deadline = time.monotonic() + 10
                while not cores[other].mirrors and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert cores[other].mirrors and cores[holder].mirrors  # moved; its old cache is still there
                discovery.add("target", addresses[holder])
            tokens += chunk.tokens
    assert tokens == reference(tokenizer.encode(PROMPTS[0]), N)
    assert_released(cores["a"], cores["b"])
