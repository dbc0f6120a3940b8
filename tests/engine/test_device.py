"""The runtime is device-first: every tensor of a pass is made on the runner's device, and the
host reads back once per forward pass, not once per request or token.

Both are checked on the CPU by watching torch calls (a TorchFunctionMode): a factory call
(torch.tensor, arange, zeros, ...) without a device would put a tensor on the CPU next to a
GPU's, and every read-back (.tolist(), .item(), int(t), ...) is a host-device synchronisation
on a GPU. What a GPU would do with them cannot run here; this is the part that can.
"""

from __future__ import annotations

import pytest
import torch
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)
from torch.overrides import TorchFunctionMode

from specd.errors import SpecdError
from specd.worker.device import resolve_placement
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.methods import make_exit_decoder, make_proposer, needs_adapter
from specd.worker.model import attend_fused, attend_grouped
from specd.worker.runner import ModelRunner
from specd.worker.sampling import SamplingParams

FACTORIES = {"tensor", "as_tensor", "arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint",
             "randperm", "linspace", "eye", "tensordot"}
READ_BACKS = {"tolist", "item", "__int__", "__float__", "__bool__", "__index__", "numpy", "cpu"}


class Watch(TorchFunctionMode):
    """Records factory calls that name no device, and read-backs to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.unplaced: list[str] = []
        self.read_backs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in FACTORIES and kwargs.get("device") is None:
            import traceback

            self.unplaced.append(f"torch.{name} at {traceback.extract_stack(limit=2)[0]}")
        if name in READ_BACKS:
            self.read_backs += 1
        return func(*args, **kwargs)


def _requests(k: int) -> list[GenerationRequest]:
    params = [SamplingParams(), SamplingParams(temperature=0.9, top_k=20, top_p=0.9),
              SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=0.7)]
    return [GenerationRequest([5, 17, 33, 2, 5, 17], 12, p, k=k, stop_at_eos=False) for p in params]


def _engine(method: str, tiny_models, early_exit_target) -> SpeculativeEngine:
    if method == "model":
        return SpeculativeEngine(ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT),
                                 ModelRunner.from_dir(tiny_models.draft, placement=TEST_PLACEMENT))
    target = ModelRunner.from_dir(early_exit_target, placement=TEST_PLACEMENT, with_adapter=needs_adapter(method))
    return SpeculativeEngine(target, proposer=make_proposer(method, target, early_exit_target),
                             exit_decoder=make_exit_decoder(method, target, early_exit_target))


@pytest.mark.parametrize("method", ["model", "early-exit", "hierarchical", "ngram", "specee"])
def test_a_generation_makes_every_tensor_on_the_device_and_reads_back_once_per_pass(
        method, tiny_models, early_exit_target):
    engine = _engine(method, tiny_models, early_exit_target)
    runners = {id(r): r for r in (engine.target, engine.draft) if r is not None}
    passes = 0
    for runner in runners.values():
        forward = runner.forward

        def counted(items, forward=forward):
            nonlocal passes
            passes += 1
            return forward(items)
        runner.forward = counted
    engine.generate(_requests(k=0 if method == "specee" else 4))  # warm: lazy one-off set-up happens here
    passes = 0
    with Watch() as watch:
        outputs = engine.generate(_requests(k=0 if method == "specee" else 4))
    assert all(len(tokens) == 12 for tokens, _ in outputs)
    assert watch.unplaced == [], "tensors made without the runner's device"
    # four requests per pass: reading back per request or per token would be several per pass
    assert 0 < watch.read_backs <= passes, f"{watch.read_backs} read-backs in {passes} forward passes"


@pytest.mark.parametrize("mask", [False, True])
def test_fused_attention_equals_the_grouped_one(mask):
    """A GPU runs scaled_dot_product_attention; its semantics (grouped-query heads, the mask of k+1
    new tokens after a cache) must be the CPU path's."""
    torch.manual_seed(0)
    q, keys, values = torch.randn(8, 3, 16), torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    allowed = torch.arange(10) <= (7 + torch.arange(3)).unsqueeze(1) if mask else None
    torch.testing.assert_close(attend_fused(q, keys, values, allowed), attend_grouped(q, keys, values, allowed))


def test_device_and_dtype_are_checked_by_name():
    with pytest.raises(SpecdError, match="--device must be one of auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_placement("tpu")
    with pytest.raises(SpecdError, match="--dtype must be one of"):
        resolve_placement("cpu", "int8")
    assert resolve_placement("cpu").dtype == torch.float32  # auto on a CPU
    if not torch.cuda.is_available():
        with pytest.raises(SpecdError, match="--device cuda: CUDA is not available"):
            resolve_placement("cuda")
        assert resolve_placement("auto").device.type == "cpu"
    else:
        assert resolve_placement("auto").dtype == torch.bfloat16
