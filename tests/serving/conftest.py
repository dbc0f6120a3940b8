"""Fixtures of the serving tests: tiny models, in-process workers and routers on real gRPC loopback."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/serving/serving_support.py

from serving_support import build_models  # noqa: E402

from specd.router.config import RouterConfig  # noqa: E402
from specd.router.discovery import StaticDiscovery  # noqa: E402

torch.set_num_threads(1)


class LoopThread:
    """An asyncio loop in a background thread: servers live there, tests call in with `run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


class Workers:
    """In-process worker servers by name; their cores stay reachable for assertions."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.running = {}
        self.cores = {}

    def start(self, name: str, role: str, model_dir: Path, kv_budget_mib: float = 512,
              draft_method: str = "model") -> str:
        from specd.worker.servers.service import load_core, start_worker

        core = load_core(role, str(model_dir), kv_budget_mib=kv_budget_mib, draft_method=draft_method)
        self.cores[name] = core
        self.running[name] = self.loop.run(start_worker(core))
        return f"127.0.0.1:{self.running[name].port}"

    def stop(self, name: str, grace_s: float = 1.0) -> None:
        self.loop.run(self.running.pop(name).stop(grace_s))

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


@pytest.fixture(scope="session")
def workers(loop, models):
    """target (random target model), draft (smaller random model), echo (a draft that IS the target)."""
    pool = Workers(loop)
    target, draft = models
    addresses = {"target": pool.start("target", "target", target), "draft": pool.start("draft", "draft", draft),
                 "echo": pool.start("echo", "draft", target)}
    pool.addresses = addresses
    yield pool
    pool.stop_all()


@pytest.fixture
def worker_pool(loop):
    """An empty pool for a test's own workers; they are stopped after the test."""
    pool = Workers(loop)
    yield pool
    pool.stop_all()


@pytest.fixture
def start_router(loop):
    """start_router(config, targets, drafts) -> "127.0.0.1:port"; stopped after the test."""
    from specd.router.service import start_router as start

    started = []

    def make(config: RouterConfig, targets: list[str], drafts: list[str] = ()) -> str:
        router = loop.run(start(config, StaticDiscovery(targets, drafts), ready_timeout_s=30))
        started.append(router)
        return f"127.0.0.1:{router.port}"

    make.routers = started
    yield make
    for router in started:
        loop.run(router.stop(grace_s=1))


@pytest.fixture(scope="session")
def reference(models):
    """Plain greedy target decoding with the in-process engine: reference(prompt_tokens, n) -> tokens."""
    from specd.worker.engine import GenerationRequest, SpeculativeEngine
    from specd.worker.runner import ModelRunner

    engine = SpeculativeEngine(ModelRunner.from_dir(models[0]))

    def generate(prompt: list[int], max_new_tokens: int) -> list[int]:
        [(tokens, _)] = engine.generate([GenerationRequest(prompt, max_new_tokens, k=0, stop_at_eos=False)])
        return tokens

    return generate


@pytest.fixture(scope="session")
def tokenizer(models):
    from specd.worker.tokenizer import Tokenizer

    return Tokenizer(models[0])
