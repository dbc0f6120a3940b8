"""Checkpoints load through a memory map: equal to safetensors' own reader, and free of host
memory until used (what lets the ranks of a tensor-parallel pod share one copy of the weights)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from specd.worker.checkpoint import load_model, map_safetensors
from specd.worker.random_model import write_random_pair


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_mapped_tensors_equal_safetensors_own(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "ids": torch.arange(4),
               "empty": torch.zeros(0, 2), "scalar": torch.tensor(2.5, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    mapped, reference = map_safetensors(tmp_path / "w.safetensors"), load_file(str(tmp_path / "w.safetensors"))
    assert mapped.keys() == reference.keys()
    for name, tensor in reference.items():
        assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name


def test_loading_a_model_reads_no_weight_until_it_is_used(tmp_path, tiny_models):
    tokenizer = (tiny_models.target / "tokenizer.json").read_text()
    target_dir, _ = write_random_pair(tmp_path, "small", tokenizer, torch.device("cpu"), torch.float32)
    weights = (target_dir / "model.safetensors").stat().st_size
    before = _resident_bytes()
    model = load_model(target_dir)
    grown = _resident_bytes() - before
    assert grown < weights / 4, (f"loading took {grown / 2**20:.1f} MiB of host memory "
                                 f"for {weights / 2**20:.1f} MiB of weights")
    for p in model.parameters():  # read every page: now the weights are resident
        p.sum()
    assert _resident_bytes() - before > weights / 2
