"""Command lines of the control-plane processes (flags as of Kubernetes 1.33, etcd 3.5, kwok 0.7).

Pure functions from a `Layout` (where files are, which ports) to argv lists, so the flag sets can
be read in one place and unit-tested without starting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specd.devcluster.kwok import NODE_ANNOTATION, NODE_ANNOTATION_VALUE
from specd.devcluster.pki import ClusterPki
from specd.ports import LOOPBACK

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.1/16"  # kwok hands out pod IPs from this address upwards
NODE_IP = "10.240.0.1"  # the InternalIP kwok reports for its nodes (never dialled)
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Client identities (CN, O). The controller manager and scheduler get exactly the users that the
# bootstrap RBAC policy grants; kwok plays every kubelet, so it is an admin.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("specd-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kwok": ("kwok-controller", ("system:masters",)),
}


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def from_list(cls, ports: list[int]) -> Ports:
        return cls(*ports)


@dataclass(frozen=True)
class Layout:
    directory: Path
    bin_dir: Path
    ports: Ports
    pki: ClusterPki
    # The host's address on the real node's pod network, when the cluster has a real node:
    # the API server then serves there too and backs the `kubernetes` Service with it.
    pod_network_gateway: str | None = None

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.etcd_client}"

    @property
    def apiserver_host(self) -> str:
        return self.pod_network_gateway or LOOPBACK

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.apiserver_host}:{self.ports.apiserver}"

    def component_kubeconfig(self, component: str) -> Path:
        return self.directory / "kubeconfigs" / f"{component}.yaml"

    @property
    def kwok_config(self) -> Path:
        return self.directory / "kwok.yaml"


def etcd(lay: Layout) -> list[str]:
    peer = f"http://{LOOPBACK}:{lay.ports.etcd_peer}"
    return [
        str(lay.bin_dir / "etcd"),
        "--name=specd",
        f"--data-dir={lay.directory / 'etcd'}",
        f"--listen-client-urls={lay.etcd_url}",
        f"--advertise-client-urls={lay.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=specd={peer}",
        "--initial-cluster-state=new",
        # Throw-away data: skip fsync, which dominates write latency on shared CI disks.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def kube_apiserver(lay: Layout) -> list[str]:
    pki = lay.pki
    if lay.pod_network_gateway:
        # Served on the host's address on the pod bridge only: pods reach it through the
        # `kubernetes` Service (kube-proxy's DNAT to the advertised address), the host directly;
        # the kubelet is reached at its InternalIP, the same address.
        network = [f"--bind-address={lay.pod_network_gateway}",
                   f"--advertise-address={lay.pod_network_gateway}",
                   "--endpoint-reconciler-type=lease",
                   "--kubelet-preferred-address-types=InternalIP"]
    else:
        # No kubelet, no real network: keep the `kubernetes` Service without loopback endpoints.
        network = [f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
                   "--endpoint-reconciler-type=none"]
    return [
        str(lay.bin_dir / "kube-apiserver"),
        f"--etcd-servers={lay.etcd_url}",
        *network,
        f"--secure-port={lay.ports.apiserver}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        f"--cert-dir={lay.directory / 'apiserver-certs'}",
        "--profiling=false",
    ]


def kube_controller_manager(lay: Layout) -> list[str]:
    kubeconfig = lay.component_kubeconfig("controller-manager")
    pki = lay.pki
    return [
        str(lay.bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={lay.ports.controller_manager}",
        f"--cert-dir={lay.directory / 'controller-manager-certs'}",
        "--leader-elect=false",
        # Each controller acts as its own ServiceAccount, as in kubeadm clusters, so RBAC
        # mistakes in the bootstrap roles would show up here too.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ]


def kube_scheduler(lay: Layout) -> list[str]:
    kubeconfig = lay.component_kubeconfig("scheduler")
    return [
        str(lay.bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={lay.ports.scheduler}",
        f"--cert-dir={lay.directory / 'scheduler-certs'}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def kwok(lay: Layout) -> list[str]:
    address = f"{LOOPBACK}:{lay.ports.kwok}"
    return [
        str(lay.bin_dir / "kwok"),
        f"--kubeconfig={lay.component_kubeconfig('kwok')}",
        f"--config={lay.kwok_config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}={NODE_ANNOTATION_VALUE}",
        f"--node-ip={NODE_IP}",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
        # kwok would otherwise listen on 0.0.0.0:10247; keep it on a free loopback port.
        f"--server-address={address}",
        f"--node-port={lay.ports.kwok}",
    ]
