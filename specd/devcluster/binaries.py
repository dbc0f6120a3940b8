"""Finding (and if needed building) the control-plane binaries via hack/testbins/build.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from specd.errors import SpecdError

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
            "kube-proxy", "kwok", "helm")

# build.sh exits with this status when there is no Go toolchain to build with.
_EXIT_NO_GO = 3


class BinariesUnavailable(SpecdError):
    """The binaries are not built and cannot be built here (no Go toolchain, no module proxy)."""


def build_script() -> Path:
    """hack/testbins/build.sh of the source checkout this package runs from."""
    script = Path(__file__).resolve().parents[2] / "hack" / "testbins" / "build.sh"
    if not script.is_file():
        raise BinariesUnavailable(
            f"{script} not found: the dev cluster needs a source checkout of specd "
            "(or pass --bin-dir / set SPECD_TESTBINS to a directory with the binaries)")
    return script


def missing(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED if not os.access(bin_dir / name, os.X_OK)]


def ensure(bin_dir: Path | None = None, build: bool = True, quiet: bool = False) -> Path:
    """The directory holding every binary in REQUIRED.

    Order: `bin_dir`, then $SPECD_TESTBINS, then the build cache of build.sh (building into it
    when `build` is true; progress goes to stderr unless `quiet`).
    """
    explicit = bin_dir or (Path(os.environ["SPECD_TESTBINS"]) if os.environ.get("SPECD_TESTBINS") else None)
    if explicit is not None:
        absent = missing(explicit)
        if absent:
            raise BinariesUnavailable(f"{explicit} lacks {', '.join(absent)}")
        return explicit
    script = build_script()
    bash = shutil.which("bash") or "/bin/bash"
    check = subprocess.run([bash, str(script), "--check"], capture_output=True, text=True,
                           check=False)
    if check.returncode == 0:
        return Path(check.stdout.strip())
    if not build:
        raise BinariesUnavailable(
            f"control-plane binaries are not built; run `make testbins` (or {script})")
    returncode, stdout, last_lines = run_showing_progress([bash, str(script)], quiet)
    if returncode == _EXIT_NO_GO:
        raise BinariesUnavailable("no Go toolchain to build the control-plane binaries "
                                  "(install Go >= 1.24 or set GO=/path/to/go)")
    if returncode != 0:
        # E.g. no module proxy: the reason is in go's last lines.
        raise BinariesUnavailable(f"building the control-plane binaries failed "
                                  f"({script} exited {returncode}):\n" + "\n".join(last_lines))
    return Path(stdout.strip().splitlines()[-1])


def run_showing_progress(argv: list[str], quiet: bool) -> tuple[int, str, list[str]]:
    """Run argv; echo its stderr (unless quiet) and keep the last lines for error messages."""
    tail: deque[str] = deque(maxlen=15)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            if not quiet:
                sys.stderr.write(line)
                sys.stderr.flush()
        stdout = proc.stdout.read()
    return proc.returncode, stdout, list(tail)


def kubectl() -> Path:
    """kubectl from PATH (the project does not build its own)."""
    found = shutil.which("kubectl")
    if not found:
        raise BinariesUnavailable("kubectl not found on PATH")
    return Path(found)
