"""`specd operator`: run the Kopf operator (current kubeconfig, or in-cluster credentials)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from specd.operator.names import ROUTER_ADDRESS_TEMPLATE

DEFAULT_IMAGE = "ghcr.io/specd/specd:0.1.0"


def register(subparsers: Any, bench_subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the Kubernetes operator of SpecDecodingService resources",
        description="Reconcile SpecDecodingService resources into target, draft and router "
                    "workloads. Uses in-cluster credentials in a pod, else the kubeconfig.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or "
                                             "~/.kube/config; ignored in a pod unless given)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("-n", "--namespace", action="append", dest="namespaces", default=[],
                        help="watch this namespace (repeatable; default: all namespaces)")
    parser.add_argument("--image", default=os.environ.get("SPECD_WORKER_IMAGE", DEFAULT_IMAGE),
                        help="worker/router image when a resource sets none (default: "
                             "$SPECD_WORKER_IMAGE or %(default)s)")
    parser.add_argument("--image-pull-policy", default="IfNotPresent",
                        choices=["Always", "IfNotPresent", "Never"])
    parser.add_argument("--resync-seconds", type=float, default=60.0,
                        help="full reconciliation of every resource this often (default 60)")
    parser.add_argument("--stats-seconds", type=float, default=10.0,
                        help="poll each Ready router's live figures this often: acceptance, "
                             "goodput and k into its resource's status, and the autoscaling "
                             "decisions (keep it well below the resources' "
                             "scaleUpWindowSeconds); 0 turns both off (default 10)")
    parser.add_argument("--router-address", default=ROUTER_ADDRESS_TEMPLATE, metavar="TEMPLATE",
                        help="where to reach a resource's router, with {cluster_ip} (of the router "
                             "Service), {service}, {namespace} and {port} filled in (default: "
                             "%(default)s; e.g. {service}.{namespace}.svc:{port} through cluster "
                             "DNS, or 127.0.0.1:{port} through kubectl port-forward outside the "
                             "cluster)")
    parser.add_argument("--liveness", metavar="URL",
                        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import functools

    import kopf

    from specd.errors import SpecdError
    from specd.kube import Kube
    from specd.operator.builders import OperatorConfig
    from specd.operator.handlers import Periodic, build_registry
    from specd.operator.live import LiveFigures
    from specd.operator.names import FIELD_MANAGER
    from specd.operator.reconcile import Reconciler, every_resource, resync
    from specd.operator.scaling import Scaling

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.resync_seconds <= 0:
        raise SpecdError("--resync-seconds must be positive")
    if args.stats_seconds < 0:
        raise SpecdError("--stats-seconds must be 0 (off) or positive")
    try:
        args.router_address.format(service="s", namespace="n", port=1, cluster_ip="10.0.0.1")
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecdError(f"--router-address {args.router_address!r}: use only {{cluster_ip}}, "
                         f"{{service}}, {{namespace}} and {{port}} ({exc})") from None
    kube = Kube.connect(args.kubeconfig, args.context, manager=FIELD_MANAGER)
    reconciler = Reconciler(kube, OperatorConfig(args.image, args.image_pull_policy))
    periodic: list[Periodic] = [functools.partial(resync, reconciler, args.namespaces, args.resync_seconds)]
    if args.stats_seconds:
        live = LiveFigures(kube, args.router_address, scaling=Scaling(kube, reconciler))
        periodic.append(functools.partial(every_resource, kube, args.namespaces, args.stats_seconds,
                                          "live figures", live.refresh))
    kopf.run(registry=build_registry(kube, periodic), memo=kopf.Memo(reconciler=reconciler),
             standalone=True, clusterwide=not args.namespaces, namespaces=args.namespaces,
             liveness_endpoint=args.liveness)
    return 0
