"""hack/gpu-check.sh's CPU dry run: the same steps as on a GPU machine (the engine's correctness
tests, the decode benchmark on the demo pair and on a random Llama-shaped pair), at small sizes.
CI has no GPU; this keeps the script working between the sessions that are lent one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_passes_and_reports_its_figures(tmp_path):
    env = {**os.environ, "SPECD_PYTHON": sys.executable, "SPECD_CACHE": str(tmp_path)}
    proc = subprocess.run(["bash", "hack/gpu-check.sh", "--dry-run", "--no-install"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["dry_run"] and report["device"] == "cpu"
    assert report["tests_passed"] and report["tests"]["tests"] >= 10 and report["tests"]["failed"] == []
    assert report["tests"]["skipped"] == 0
    assert 0 < report["hbm_bandwidth_fraction"] < 1
    assert report["random_model"]["random_model"] == "small"
    assert set(report["random_model_speedups"]) == {"plain", "model", "early-exit", "ngram"}
    assert report["demo"]["lossless"] and report["random"]["lossless"]
