"""`specd dev-cluster up|down|status`: a local Kubernetes control plane with fake GPU nodes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers, bench_subparsers) -> None:
    parser = subparsers.add_parser(
        "dev-cluster", help="run a local Kubernetes control plane (etcd, apiserver, kwok nodes)")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    commands = parser.add_subparsers(dest="dev_cluster_command", metavar="ACTION")

    def add(name: str, help_: str, func) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_)
        sub.add_argument("--dir", type=Path, default=None,
                         help="state directory (default ~/.specd/dev-cluster)")
        sub.set_defaults(func=func)
        return sub

    up = add("up", "start in the background, print the kubeconfig path once ready", _up)
    up.add_argument("--bin-dir", type=Path, default=None,
                    help="directory with the binaries (default: build/reuse via hack/testbins)")
    up.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    up.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu per node")
    up.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    up.add_argument("--real-node", action="store_true",
                    help="also run one real node (containerd, kubelet, kube-proxy; needs root) "
                         "with the project's images built by `make images`")
    add("down", "stop every process and remove the data", _down)
    add("status", "print the kubeconfig path if a cluster is running", _status)


def _progress(message: str) -> None:
    print(f"dev-cluster: {message}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    from specd.devcluster import up
    from specd.errors import SpecdError

    if args.nodes < 1 or args.gpus_per_node < 0:
        raise SpecdError("--nodes must be >= 1 and --gpus-per-node >= 0")
    cluster = up(args.dir, bin_dir=args.bin_dir, nodes=args.nodes,
                 gpus_per_node=args.gpus_per_node, timeout_s=args.timeout, log=_progress,
                 real_node=args.real_node)
    print(cluster.kubeconfig)
    return 0


def _down(args: argparse.Namespace) -> int:
    from specd.devcluster import default_directory, down

    directory = args.dir or default_directory()
    _progress(f"stopped and removed {directory}" if down(args.dir)
              else f"no dev cluster in {directory}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from specd.devcluster import status

    cluster = status(args.dir)
    if cluster is None:
        _progress("not running")
        return 1
    print(cluster.kubeconfig)
    return 0
