"""Tensor parallelism: one model sharded over N processes with DeepSpeed's `init_inference`.

Rank 0 is the calling process and drives: every state-changing runner call (forward,
truncate, release) is broadcast to the followers before rank 0 runs it, so all ranks execute
the same batches in the same order and their KV caches (each holding its own heads) stay in
step. The all-reduces inside DeepSpeed's row-parallel layers make every rank's output equal.

On this project's CPU machines the process group uses gloo; on GPUs, NCCL, with rank r on GPU r
of the pod (one process per GPU; the pod requests tensorParallelSize GPUs). Each rank loads the
whole checkpoint into host memory before DeepSpeed shards it onto its GPU: a model needs
(its size x ranks) of host memory while it loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from specd.errors import SpecdError
from specd.ports import LOOPBACK, free_port
from specd.worker.checkpoint import load_model
from specd.worker.device import CPU, Placement
from specd.worker.early_exit import load_adapter
from specd.worker.model import LlamaDecoderLayer
from specd.worker.runner import DEFAULT_KV_BUDGET_MIB, ModelRunner

_CLOSE = ("close",)
# The row-parallel projections of a decoder layer: their outputs are partial sums that
# DeepSpeed all-reduces. Every other Linear of the layer is split column-wise.
_ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


def load_runner(model_dir: str | Path, tensor_parallel_size: int = 1,
                kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB, with_adapter: bool = False,
                placement: Placement = CPU) -> ModelRunner:
    """A runner for the model, sharded over `tensor_parallel_size` processes (this one is rank 0).
    with_adapter: load the target's Kangaroo adapter too (early-exit drafting; not sharded).
    On CUDA, rank r runs on GPU r (placement.device names the kind; its index is ignored)."""
    if tensor_parallel_size < 1 or tensor_parallel_size & (tensor_parallel_size - 1):
        raise SpecdError(f"tensor_parallel_size must be a power of two, got {tensor_parallel_size}")
    if tensor_parallel_size == 1:
        return ModelRunner.from_dir(model_dir, kv_budget_mib, placement, with_adapter=with_adapter)
    _check_divisible(model_dir, tensor_parallel_size)
    if placement.device.type == "cuda" and torch.cuda.device_count() < tensor_parallel_size:
        raise SpecdError(f"tensor_parallel_size {tensor_parallel_size} needs as many GPUs; "
                         f"{torch.cuda.device_count()} visible")
    import torch.multiprocessing as mp

    address = (LOOPBACK, free_port())
    context = mp.get_context("spawn")
    followers = [
        context.Process(target=_follow,
                        args=(str(model_dir), rank, tensor_parallel_size, address, kv_budget_mib, with_adapter,
                              placement),
                        daemon=True, name=f"specd-tp-rank{rank}")
        for rank in range(1, tensor_parallel_size)
    ]
    for process in followers:
        process.start()
    runner = _build(str(model_dir), 0, tensor_parallel_size, address, kv_budget_mib, with_adapter, placement,
                    runner_class=TensorParallelRunner)
    assert isinstance(runner, TensorParallelRunner)
    runner.followers = followers
    return runner


class TensorParallelRunner(ModelRunner):
    """Rank 0 of a tensor-parallel group: every state-changing call is broadcast to the followers
    (which apply it with `ModelRunner.apply`) before it runs here."""

    followers: list[Any]  # the followers' processes

    def replicate(self, op: tuple) -> None:
        torch.distributed.broadcast_object_list([op], src=0)

    def close(self) -> None:
        self.replicate(_CLOSE)
        for process in self.followers:
            process.join(timeout=30)
        torch.distributed.destroy_process_group()


def _build(model_dir: str, rank: int, world: int, address: tuple[str, int], kv_budget_mib: float,
           with_adapter: bool, placement: Placement, runner_class: type[ModelRunner] = ModelRunner) -> ModelRunner:
    on_gpu = placement.device.type == "cuda"
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    os.environ.update(MASTER_ADDR=address[0], MASTER_PORT=str(address[1]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_SIZE=str(world))
    if on_gpu:
        torch.cuda.set_device(rank)  # before NCCL: each rank's communicator binds its own GPU
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    # DeepSpeed shards the host copy and moves each rank's shard to its device
    model = load_model(model_dir, placement.dtype)
    engine = deepspeed.init_inference(
        model,
        tensor_parallel={"tp_size": world},
        dtype=placement.dtype,
        # DeepSpeed's fused kernels replace Hugging Face module classes it knows; this model's
        # layers are its own, so tensor parallelism is AutoTP's sharding of the projections.
        replace_with_kernel_inject=False,
        injection_policy={LlamaDecoderLayer: _ROW_PARALLEL},
    )
    device = next(engine.module.parameters()).device
    adapter = load_adapter(model_dir, model.config, placement.dtype, device) if with_adapter else None
    # the budget is per process: each rank holds 1/world of the KV heads
    return runner_class(engine.module, kv_budget_mib / world, adapter)


def _follow(model_dir: str, rank: int, world: int, address: tuple[str, int], kv_budget_mib: float,
            with_adapter: bool, placement: Placement) -> None:
    torch.set_num_threads(1)
    runner = _build(model_dir, rank, world, address, kv_budget_mib, with_adapter, placement)
    while True:
        box: list[tuple | None] = [None]
        torch.distributed.broadcast_object_list(box, src=0)
        op = box[0]
        if op is None or op == _CLOSE:
            break
        runner.apply(op)
    torch.distributed.destroy_process_group()


def _check_divisible(model_dir: str | Path, world: int) -> None:
    from specd.worker.checkpoint import check_model_dir
    from specd.worker.config import LlamaConfig

    config = LlamaConfig.from_file(check_model_dir(model_dir) / "config.json")
    if config.num_key_value_heads % world or config.num_attention_heads % world:
        raise SpecdError(
            f"tensor_parallel_size {world} must divide the attention heads ({config.num_attention_heads}) "
            f"and key/value heads ({config.num_key_value_heads})"
        )
