"""Helpers shared by the serving tests: tiny random-weight Llama models with a real BPE tokenizer,
the prompts, and a check that workers released every cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from specd.demo import corpus
from specd.demo.train import EOS, train_tokenizer
from specd.worker.checkpoint import save_model
from specd.worker.config import LlamaConfig
from specd.worker.model import LlamaForCausalLM

VOCAB = 512


def build_model(path: Path, hidden: int, layers: int, seed: int, tokenizer_json: str) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, eos_token_id=0)
    save_model(LlamaForCausalLM(config), path)
    (path / "tokenizer.json").write_text(tokenizer_json)
    return path


def build_models(root: Path) -> tuple[Path, Path]:
    """(target, draft) directories under root; the draft is smaller and independently initialised."""
    tokenizer = train_tokenizer(corpus.read_texts(held_out=False, max_chars=200_000), VOCAB)
    assert tokenizer.token_to_id(EOS) == 0
    text = tokenizer.to_str()
    return (build_model(root / "target", 64, 2, seed=1, tokenizer_json=text),
            build_model(root / "draft", 32, 1, seed=2, tokenizer_json=text))


def assert_released(*cores, timeout_s: float = 5.0) -> None:
    """Wait for the router's (asynchronous) Release calls, then check the workers hold nothing."""
    import time

    deadline = time.monotonic() + timeout_s
    while any(core.mirrors or core.runner.kv.used_tokens() for core in cores) and time.monotonic() < deadline:
        time.sleep(0.05)
    for core in cores:
        assert not core.mirrors and core.runner.kv.used_tokens() == 0, core.role


PROMPTS = ["def fibonacci(n):\n    ", "import os\nimport sys\n\n", "The quick brown fox", "class Parser:\n",
           "    return self._value", "# Copyright 2001 Python Software Foundation\n", "for i in range(10):",
           "if __name__ == '__main__':\n"]


class Endpoints:
    """Discovery whose endpoints the test sets, as EndpointSlices change when a pod is deleted (the
    pod may still be serving while it terminates)."""

    def __init__(self, targets: list[str], drafts: list[str]) -> None:
        self.endpoints = {"target": list(targets), "draft": list(drafts)}
        self.callbacks: list[Callable[[dict[str, list[str]]], None]] = []

    def current(self) -> dict[str, list[str]]:
        return {role: list(addresses) for role, addresses in self.endpoints.items()}

    def subscribe(self, callback: Callable[[dict[str, list[str]]], None]) -> None:
        self.callbacks.append(callback)

    def remove(self, role: str, address: str) -> None:
        self.set(role, [a for a in self.endpoints[role] if a != address])

    def add(self, role: str, address: str) -> None:
        self.set(role, [*self.endpoints[role], address])

    def set(self, role: str, addresses: list[str]) -> None:
        self.endpoints[role] = list(addresses)
        for callback in self.callbacks:
            callback(self.current())

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
