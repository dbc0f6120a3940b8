"""One Tokenizer, from a model directory or (in the router) from a worker's ModelInfo."""

from __future__ import annotations

from pathlib import Path

import pytest

import specd.demo
from specd.errors import SpecdError
from specd.proto.v1 import worker_pb2
from specd.worker.tokenizer import StreamDecoder, Tokenizer

MODEL_DIR = Path(specd.demo.__file__).parent / "checkpoints" / "target"
TEXT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # ünïcödé ✓"


def test_from_model_info_is_the_model_directorys_tokenizer():
    local = Tokenizer(MODEL_DIR, eos_token_id=0)
    info = worker_pb2.ModelInfo(model="target", vocab_size=local.vocab_size + 8, max_context=512, eos_token_id=0,
                                tokenizer_json=(MODEL_DIR / "tokenizer.json").read_text())
    remote = Tokenizer.from_model_info(info)
    ids = local.encode(TEXT)
    assert remote.encode(TEXT) == ids and remote.decode(ids) == local.decode(ids) == TEXT
    assert remote.vocab_size == info.vocab_size  # the model's, which may exceed the tokenizer's
    assert remote.eos_token_id == local.eos_token_id == 0
    decoder = StreamDecoder(remote)
    assert "".join(decoder.push([i]) for i in ids) + decoder.flush() == TEXT


def test_from_model_info_without_eos_or_tokenizer():
    info = worker_pb2.ModelInfo(model="m", vocab_size=10, tokenizer_json=(MODEL_DIR / "tokenizer.json").read_text())
    assert Tokenizer.from_model_info(info).eos_token_id is None
    with pytest.raises(SpecdError, match="model m has no tokenizer.json"):
        Tokenizer.from_model_info(worker_pb2.ModelInfo(model="m", vocab_size=10))
    with pytest.raises(SpecdError, match="tokenizer not found"):
        Tokenizer(MODEL_DIR.parent)
