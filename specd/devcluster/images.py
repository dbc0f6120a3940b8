"""The project's container images for the real node, through hack/images/build.sh (`make images`)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from specd.devcluster.binaries import run_showing_progress
from specd.devcluster.realnode import RealNodeUnavailable
from specd.errors import SpecdError

TAG = "dev"
_EXIT_TOOL_MISSING = 3  # build.sh: mmdebstrap, buildah or ctr is missing


@dataclass(frozen=True)
class Images:
    worker: str  # `specd worker` / `specd router` (docker/specd.Dockerfile)
    operator: str  # `specd operator` (docker/operator.Dockerfile)
    pause: str  # the pod sandbox image of the real node's containerd


def cache_dir() -> Path:
    return Path(os.environ.get("SPECD_CACHE") or Path.home() / ".cache" / "specd")


def build_script() -> Path:
    script = Path(__file__).resolve().parents[2] / "hack" / "images" / "build.sh"
    if not script.is_file():
        raise RealNodeUnavailable(f"{script} not found: images are built from a source checkout")
    return script


def build(containerd_socket: Path | None = None, quiet: bool = False) -> Images:
    """Build (or reuse from the cache) the images; with a socket, import them into that
    containerd too. Progress goes to stderr unless `quiet`."""
    argv = [shutil.which("bash") or "/bin/bash", str(build_script()), "--tag", TAG]
    if containerd_socket is not None:
        argv += ["--containerd", str(containerd_socket)]
    returncode, stdout, last_lines = run_showing_progress(argv, quiet)
    if returncode == _EXIT_TOOL_MISSING:
        raise RealNodeUnavailable("cannot build images here: " + " ".join(last_lines[-1:]))
    if returncode != 0:  # the reason is in the script's last lines (e.g. a full disk)
        raise SpecdError(f"{' '.join(argv)} exited {returncode}:\n" + "\n".join(last_lines))
    worker, operator, pause = stdout.split()
    return Images(worker=worker, operator=operator, pause=pause)
