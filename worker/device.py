"""Where a worker's tensors live: one device and one floating-point dtype per process.

Every tensor of the runtime (weights, KV caches, token and position tensors, sampling noise) is
made on the runner's device; the host sees only token ids, once per forward pass. `auto` means a
GPU with bfloat16 when CUDA is available (what serving runs on), otherwise the CPU with float32
(bfloat16 matmuls are slow on most CPUs and the CPU tests compare against float32 references).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specd.contract import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICE_KINDS, DTYPES
from specd.errors import SpecdError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


CPU = Placement(torch.device("cpu"), torch.float32)


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a device this process can use (clear error otherwise)."""
    kind, _, index = name.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise SpecdError(f"--device must be one of {', '.join(DEVICE_KINDS)} or cuda:N, got {name!r}")
    if kind == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SpecdError(f"--device {name}: CUDA is not available in this process "
                             "(no GPU visible, or torch was built without CUDA)")
        if index and int(index) >= torch.cuda.device_count():
            raise SpecdError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise SpecdError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def resolve_placement(device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE) -> Placement:
    resolved = resolve_device(device)
    return Placement(resolved, resolve_dtype(dtype, resolved))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing a GPU needs it; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on `device`. To a GPU it is copied from pinned memory without
    blocking: a plain copy from pageable memory would wait for the device's queue to drain."""
    host = torch.tensor(values, dtype=dtype, device="cpu")
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)
