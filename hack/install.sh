#!/usr/bin/env bash
# Installs specd and everything it needs into a virtual environment, from nothing.
# torch comes first: DeepSpeed builds against the torch already in the environment.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
step "upgrading pip"
$PIP install --quiet --upgrade pip setuptools wheel
step "installing torch (PyPI's Linux wheel; it runs on CPU)"
$PIP install --progress-bar off "torch==2.10.0" numpy
step "installing DeepSpeed from source against that torch (no CUDA ops are prebuilt)"
DS_BUILD_OPS=0 $PIP install --progress-bar off --no-build-isolation "deepspeed==0.19.8"
step "installing specd (editable) with its test extras"
$PIP install --progress-bar off -e ".[test]"
step "installed: $("$VENV/bin/specd" --version)"
