#!/usr/bin/env bash
# The GPU check: on a Linux machine with NVIDIA GPUs and nothing else installed, install specd
# and, on CUDA,
#   1. run the engine's correctness tests (greedy equality across k and batch sizes, the sampling
#      goodness-of-fit tests, KV rollback, the device guard; TP=2 == TP=1 when 2 GPUs are there);
#   2. race `specd bench decode --device cuda` on the demo pair (and, for reference, the same on
#      the CPU) and on a randomly initialised ~1B Llama-shaped pair;
# then print one JSON object on stdout (progress goes to stderr), with `hbm_bandwidth_fraction`
# of plain decoding of the ~1B model at batch 1.
#
# Without a GPU it says so and makes a dry run of the same steps on the CPU, at small sizes,
# and exits 0 when they pass (CI runs the dry run: tests/test_gpu_check.py).
#
# Options: --dry-run (the CPU run even where a GPU is), --no-install (use $SPECD_PYTHON or
# python3 as it is: a machine whose Python already holds torch and specd's dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
say() { echo "[gpu-check $(( $(date +%s) - started ))s] $*" >&2; }

dry_run=0 install=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --no-install) install=0 ;;
    *) echo "usage: hack/gpu-check.sh [--dry-run] [--no-install]" >&2; exit 2 ;;
  esac
done

if [ "$install" = 1 ]; then
  say "installing specd (make install)"
  make --no-print-directory install >&2
  PY=.venv/bin/python
else
  PY=${SPECD_PYTHON:-python3}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # specd from this checkout
fi

gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "$dry_run" = 1 ] || [ "$gpus" = 0 ]; then
  [ "$gpus" = 0 ] && say "no CUDA GPU visible to torch: a CPU dry run of the same steps"
  device=cpu
  # one of each kind of test, so the dry run stays short
  tests=("tests/engine/test_engine_greedy_equality.py::test_speculative_equals_plain[3-3]"
         tests/engine/test_engine_greedy_equality.py::test_mixed_k_in_one_batch
         "tests/engine/test_sampling_distribution.py::test_speculative_sampling_matches_target[t1-rejection]"
         tests/engine/test_sampling_distribution.py::test_a_seed_reproduces_its_output_whatever_k
         tests/engine/test_runner.py::test_rollback_then_new_tokens_equals_fresh_computation
         tests/engine/test_device.py)
  bench=(--batch-sizes 1 --prompts 2 --max-new-tokens 16 --rounds 1)
  random_shape=small
else
  say "$gpus GPU(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  device=cuda
  tests=(tests/engine/test_engine_greedy_equality.py tests/engine/test_sampling_distribution.py
         tests/engine/test_runner.py tests/engine/test_device.py)
  [ "$gpus" -ge 2 ] && tests+=(tests/engine/test_engine_tensor_parallel.py)
  bench=(--batch-sizes 1,8 --prompts 8 --max-new-tokens 96 --rounds 2)
  random_shape=1b
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

say "engine correctness tests on $device"
set +e
SPECD_TEST_DEVICE=$device "$PY" -m pytest -q -p no:cacheprovider --junitxml="$out/tests.xml" "${tests[@]}" >&2
tests_rc=$?
set -e

specd() { "$PY" -m specd.cli "$@"; }
say "bench decode: demo pair on $device"
specd bench decode --device "$device" --json --no-peers "${bench[@]}" >"$out/demo.json"
if [ "$device" = cuda ]; then
  say "bench decode: demo pair on the CPU (the reference figure)"
  specd bench decode --device cpu --json --no-peers --batch-sizes 1 --prompts 4 --max-new-tokens 48 \
    --rounds 1 --threads "$(nproc)" >"$out/demo_cpu.json"
fi
say "bench decode: random $random_shape Llama-shaped pair on $device"
specd bench decode --device "$device" --json --no-peers --random-model "$random_shape" \
  --methods model,early-exit,ngram "${bench[@]}" >"$out/random.json"

"$PY" - "$out" "$device" "$gpus" "$tests_rc" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, device, gpus, tests_rc, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
suite = ET.parse(out / "tests.xml").getroot()
suite = suite if suite.tag == "testsuite" else suite[0]
tests = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
tests["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                   if case.find("failure") is not None or case.find("error") is not None]

def speedups(result):
    return {m["method"]: m["speedup"] for m in result["methods"]}

demo = json.loads((out / "demo.json").read_text())
random_pair = json.loads((out / "random.json").read_text())
report = {
    "device": device,
    "gpus": gpus,
    "dry_run": device != "cuda",
    "seconds": seconds,
    "tests": tests,
    "tests_passed": tests_rc == 0,
    "hbm_bandwidth_fraction": random_pair["hbm_bandwidth_fraction"],
    "random_model": {key: random_pair[key] for key in (
        "random_model", "target_parameters", "dtype", "autoregressive_tokens_per_s", "bytes_per_token",
        "achieved_bytes_per_s", "peak_bytes_per_s", "peak_source", "hbm_bandwidth_fraction")},
    "random_model_speedups": speedups(random_pair),
    "demo_speedups": speedups(demo),
    "demo_plain_tokens_per_s": demo["autoregressive_tokens_per_s"],
    "demo": demo,
    "random": random_pair,
}
if (out / "demo_cpu.json").is_file():
    cpu = json.loads((out / "demo_cpu.json").read_text())
    report["demo_cpu_speedups"] = speedups(cpu)
    report["demo_cpu_plain_tokens_per_s"] = cpu["autoregressive_tokens_per_s"]
print(json.dumps(report))
sys.exit(0 if tests_rc == 0 else 1)
EOF
