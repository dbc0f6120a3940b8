"""Bad inputs to the engine and the CLI give clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specd.errors import SpecdError
from specd.worker.checkpoint import load_model
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.runner import ModelRunner
from specd.worker.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_models) -> SpeculativeEngine:
    return SpeculativeEngine(ModelRunner.from_dir(tiny_models.target), ModelRunner.from_dir(tiny_models.draft))


@pytest.mark.parametrize("request_, message", [
    (GenerationRequest([], 10), "prompt is empty"),
    (GenerationRequest([1], 0), "max_new_tokens must be >= 1"),
    (GenerationRequest([1], 10, k=-1), "k must be between 0 and 16"),
    (GenerationRequest([1], 10, k=17), "k must be between 0 and 16"),
    (GenerationRequest([1] * 100, 40), "exceeds the model's context of 128 tokens"),
])
def test_invalid_requests(engine, request_, message):
    with pytest.raises(SpecdError, match=message):
        engine.add(request_)


def test_speculation_without_a_draft(tiny_models):
    plain = SpeculativeEngine(ModelRunner.from_dir(tiny_models.target))
    with pytest.raises(SpecdError, match="needs a drafting method"):
        plain.add(GenerationRequest([1, 2], 5, k=2))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0}, "top_p"),
])
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(SpecdError, match=message):
        SamplingParams(**kwargs)


def test_missing_model_directory(tmp_path):
    with pytest.raises(SpecdError, match="model directory not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecdError, match="config.json is missing"):
        load_model(tmp_path / "empty")


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "specd.cli", "generate", "--prompt", "x", "--target-model", str(tmp_path / "t"),
         "--draft-model", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "tokenizer not found" in result.stderr or "model directory not found" in result.stderr
    assert "Traceback" not in result.stderr
