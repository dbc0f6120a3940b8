"""DeepSpeed tensor parallelism: TP=2 over two gloo processes produces the same tokens as TP=1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)

from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.runner import ModelRunner

PROMPTS = [[5, 6, 7], [11] * 9, [40, 41, 42, 43, 44]]

# Runs in a fresh interpreter: rank 0 joins a process group, which a test process should not.
SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from specd.worker.engine import GenerationRequest, SpeculativeEngine
    from specd.worker.runner import ModelRunner
    from specd.worker.device import resolve_placement
    from specd.worker.tensor_parallel import load_runner
    target_dir, draft_dir, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    placement = resolve_placement(sys.argv[4], "float32")
    target = load_runner(target_dir, tensor_parallel_size=2, placement=placement)
    q_rows = target.model.model.layers[0].self_attn.q_proj.weight.shape[0]
    engine = SpeculativeEngine(target, ModelRunner.from_dir(draft_dir, placement=placement))
    out = engine.generate([GenerationRequest(p, 16, k=k, stop_at_eos=False) for p, k in zip(prompts, (0, 2, 4))])
    target.close()
    print("RESULT " + json.dumps({"tokens": [t for t, _ in out], "q_rows": q_rows}))
""")


def test_tp2_equals_tp1(tiny_models):
    pytest.importorskip("deepspeed")
    engine = SpeculativeEngine(ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT),
                               ModelRunner.from_dir(tiny_models.draft, placement=TEST_PLACEMENT))
    expected = [t for t, _ in engine.generate(
        [GenerationRequest(p, 16, k=k, stop_at_eos=False) for p, k in zip(PROMPTS, (0, 2, 4))])]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_models.target), str(tiny_models.draft),
                           json.dumps(PROMPTS), TEST_PLACEMENT.device.type],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    full_rows = engine.target.model.model.layers[0].self_attn.q_proj.weight.shape[0]
    assert result["q_rows"] == full_rows // 2, "the query projection was not sharded across 2 ranks"
    assert result["tokens"] == expected


# Early-exit drafting under tensor parallelism: the shallow passes and the resumed ones are
# replicated like any forward, and the (unsharded) Kangaroo adapter runs on every rank.
EARLY_EXIT_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from specd.worker.engine import GenerationRequest, SpeculativeEngine
    from specd.worker.methods import make_proposer
    from specd.worker.device import resolve_placement
    from specd.worker.tensor_parallel import load_runner
    target_dir, method, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    target = load_runner(target_dir, tensor_parallel_size=2, with_adapter=True,
                         placement=resolve_placement(sys.argv[4], "float32"))
    engine = SpeculativeEngine(target, proposer=make_proposer(method, target, target_dir))
    out = engine.generate([GenerationRequest(p, 16, k=k, stop_at_eos=False) for p, k in zip(prompts, (0, 3, 6))])
    target.close()
    print("RESULT " + json.dumps({"tokens": [t for t, _ in out], "accepted": sum(s.accepted for _, s in out)}))
""")


@pytest.mark.parametrize("method", ["early-exit", "hierarchical"])
def test_early_exit_drafting_tp2_equals_plain_tp1(early_exit_target, method):
    pytest.importorskip("deepspeed")
    engine = SpeculativeEngine(ModelRunner.from_dir(early_exit_target, placement=TEST_PLACEMENT))
    expected = [t for t, _ in engine.generate([GenerationRequest(p, 16, k=0, stop_at_eos=False) for p in PROMPTS])]
    proc = subprocess.run([sys.executable, "-c", EARLY_EXIT_SCRIPT, str(early_exit_target), method,
                           json.dumps(PROMPTS), TEST_PLACEMENT.device.type],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["tokens"] == expected
    assert result["accepted"] > 0
