"""A real Kubernetes control plane on loopback for development and tests.

etcd, kube-apiserver (TLS, RBAC), kube-controller-manager, kube-scheduler and kwok (fake GPU
nodes) run as local processes built from the pinned Go modules in hack/testbins/.

    from specd.devcluster import up, down
    cluster = up()            # returns once ready; cluster.kubeconfig, cluster.kubectl(...)
    down()                    # stops every process, removes the data

Heavy imports (cryptography, yaml) happen inside the functions, so importing this is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specd.devcluster.cluster import DevCluster

__all__ = ["DevCluster", "default_directory", "down", "status", "up"]


def default_directory() -> Path:
    """~/.specd/dev-cluster, or $SPECD_DEV_CLUSTER_DIR."""
    return Path(os.environ.get("SPECD_DEV_CLUSTER_DIR") or Path.home() / ".specd" / "dev-cluster")


def up(directory: Path | None = None, bin_dir: Path | None = None, nodes: int = 2,
       gpus_per_node: int = 8, timeout_s: float = 180, build: bool = True,
       log: Callable[[str], None] = lambda _msg: None, real_node: bool = False) -> DevCluster:
    """Start a dev cluster (building the binaries first if needed) and return once it is ready.
    real_node: one real node (containerd, kubelet, kube-proxy) with the project's images too."""
    from specd.devcluster import binaries, cluster

    bins = binaries.ensure(bin_dir, build=build)
    return cluster.start(directory or default_directory(), bins, nodes=nodes,
                         gpus_per_node=gpus_per_node, timeout_s=timeout_s, log=log,
                         real_node=real_node)


def status(directory: Path | None = None) -> DevCluster | None:
    """The cluster recorded in `directory` if every one of its processes is alive, else None."""
    from specd.devcluster.cluster import DevCluster

    found = DevCluster.load(directory or default_directory())
    return found if found is not None and found.is_running() else None


def down(directory: Path | None = None) -> bool:
    """Stop the cluster in `directory` and remove its data. False if there was none (a
    directory without the cluster's state file is left alone: it is not ours)."""
    from specd.devcluster.cluster import DevCluster

    found = DevCluster.load(directory or default_directory())
    if found is None:
        return False
    found.stop()
    return True


def __getattr__(name: str):  # lazy `from specd.devcluster import DevCluster`
    if name == "DevCluster":
        from specd.devcluster.cluster import DevCluster

        return DevCluster
    raise AttributeError(name)
