"""Starting, describing and stopping one dev cluster living in one directory.

The directory holds everything: PKI, kubeconfigs, etcd data, logs and `state.json` (ports and the
identity of each process), so `down` from another process can stop exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from specd.devcluster import binaries, components, images, kubeconfig, kwok, pki, processes, realnode
from specd.errors import SpecdError
from specd.ports import free_ports

STATE_FILE = "state.json"
ADMIN_KUBECONFIG = "kubeconfig"

Log = Callable[[str], None]


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; str() includes what kubectl printed on stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


@dataclass
class DevCluster:
    directory: Path
    bin_dir: Path
    kubeconfig: Path
    processes: list[processes.ProcessRecord]
    kubectl_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    apiserver_host: str = "127.0.0.1"
    real_node: realnode.NodeState | None = None
    # Popen objects of processes started by this interpreter (reaped on stop).
    _children: dict[int, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at the cluster (for kubectl, helm, the operator)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def server(self) -> str:
        return f"https://{self.apiserver_host}:{self.ports['apiserver']}"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                as_user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run kubectl against the cluster (text in and out); `as_user` impersonates a user,
        e.g. "system:serviceaccount:ns:name"."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}"]
        if as_user:
            argv.append(f"--as={as_user}")
        argv.extend(args)
        result = subprocess.run(argv, check=False, input=input, capture_output=True, text=True,
                                env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def is_running(self) -> bool:
        return all(processes.is_alive(r) for r in self.processes)

    def save(self) -> None:
        state = {
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
            "kubectl": str(self.kubectl_path),
            "ports": self.ports,
            "apiserver_host": self.apiserver_host,
            "real_node": self.real_node.to_json() if self.real_node else None,
            "processes": [r.to_json() for r in self.processes],
        }
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> DevCluster | None:
        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SpecdError(f"unreadable dev-cluster state {directory / STATE_FILE}: {exc}") from exc
        # A state written before the first process started has only "processes".
        return cls(directory=directory, bin_dir=Path(state.get("bin_dir", "")),
                   kubeconfig=Path(state.get("kubeconfig", directory / ADMIN_KUBECONFIG)),
                   processes=[processes.ProcessRecord.from_json(p) for p in state["processes"]],
                   kubectl_path=Path(state.get("kubectl", "kubectl")),
                   ports=state.get("ports", {}),
                   apiserver_host=state.get("apiserver_host", "127.0.0.1"),
                   real_node=realnode.NodeState(**state["real_node"]) if state.get("real_node") else None)

    def stop(self, remove_data: bool = True) -> list[str]:
        """Stop every process (reverse start order) and delete the directory; with a real node,
        its containers go after the kubelet (which would restart them) and before containerd,
        and the host is cleaned last. Returns the names of processes that had to be SIGKILLed."""
        order = list(reversed(self.processes))
        node = [r for r in order if r.name in ("kube-proxy", "kubelet")]
        rest = [r for r in order if r not in node]
        killed = processes.stop(node, self._children)
        if self.real_node:
            realnode.kill_containers(self.real_node.socket)
        killed += processes.stop(rest, self._children)
        if self.real_node:
            realnode.cleanup_host(self.real_node)
        if remove_data:
            shutil.rmtree(self.directory, ignore_errors=True)
        return killed


def start(directory: Path, bin_dir: Path, nodes: int = 2, gpus_per_node: int = 8,
          timeout_s: float = 180, log: Log = lambda _msg: None,
          die_with_parent: bool = False, real_node: bool = False) -> DevCluster:
    """Start a dev cluster in `directory` (which must not hold a running one) and wait until it
    is ready: API server serving, controllers and scheduler healthy, `nodes` kwok nodes Ready,
    the default ServiceAccount present. On failure everything started is stopped again.
    die_with_parent: the processes are killed if this Python process dies (for test fixtures).
    real_node: also run one real node (containerd, kubelet, kube-proxy) holding the project's
    images; the kwok nodes are then tainted, so only pods that tolerate them land there."""
    existing = DevCluster.load(directory)
    if existing is not None:
        if any(processes.is_alive(r) for r in existing.processes):
            raise SpecdError(f"a dev cluster is already running in {directory} "
                             "(run `specd dev-cluster down` first)")
        existing.stop()  # stale leftovers of a crashed run
    elif directory.exists() and any(directory.iterdir()):
        # Never delete a directory we did not create: it may be the user's.
        raise SpecdError(f"{directory} is not empty and holds no dev cluster; "
                         "choose another directory")
    missing = binaries.missing(bin_dir)
    if missing:
        raise binaries.BinariesUnavailable(f"{bin_dir} lacks {', '.join(missing)}")
    node_images = None
    if real_node:
        realnode.check_host(bin_dir)
        log("building (or reusing) the images for the real node")
        node_images = images.build()  # minutes when cold: not part of the readiness timeout
    deadline = time.monotonic() + timeout_s
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        cluster, lay = _prepare(directory, bin_dir, log, real_node)
        try:
            _start_all(cluster, lay, nodes, gpus_per_node, deadline, log, die_with_parent)
            if node_images is not None:
                _start_real_node(cluster, lay, node_images, deadline, log, die_with_parent)
            return cluster
        except _PortTaken as exc:
            # Another program took a port between our probe and the bind: start over.
            cluster.stop(remove_data=True)
            if attempt == _PORT_ATTEMPTS:
                raise SpecdError(f"dev cluster could not bind its ports: {exc}") from exc
            log(f"{str(exc).splitlines()[0]} (port taken); retrying on other ports")
        except BaseException:
            cluster.stop(remove_data=False)  # keep the logs for the error message's reader
            raise
    raise AssertionError("unreachable")


_PORT_ATTEMPTS = 3


class _PortTaken(SpecdError):
    """A component exited because its port was taken."""


def _prepare(directory: Path, bin_dir: Path, log: Log,
             real_node: bool) -> tuple[DevCluster, components.Layout]:
    """Fresh PKI, kubeconfigs and kwok config in `directory`, on newly chosen free ports; with a
    real node, its bridge too (the API server binds to the host's address on it)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / STATE_FILE).write_text(json.dumps({"processes": []}))  # mark it ours at once
    node_state = None
    if real_node:
        node_state = realnode.NodeState(directory=str(directory / "real-node"),
                                        socket=str(_node_layout(directory).socket), sysctls={})
        realnode.create_network(node_state, owner_alive=_cluster_alive)
        # Recorded before anything else, so a failed start still removes the bridge.
        (directory / STATE_FILE).write_text(json.dumps({"processes": [],
                                                        "real_node": node_state.to_json()}))
    gateway = realnode.GATEWAY if real_node else None
    log("generating certificates")
    lay = components.Layout(directory=directory, bin_dir=bin_dir,
                            ports=components.Ports.from_list(free_ports(6)),
                            pki=pki.generate(directory / "pki", components.CLIENTS,
                                             components.SERVICE_IP,
                                             extra_ips=(gateway,) if gateway else ()),
                            pod_network_gateway=gateway)
    admin = kubeconfig.write(directory / ADMIN_KUBECONFIG, lay.apiserver_url, lay.pki.ca.cert,
                             lay.pki.clients["admin"], "specd-admin")
    (directory / "kubeconfigs").mkdir()
    for component in ("controller-manager", "scheduler", "kwok"):
        kubeconfig.write(lay.component_kubeconfig(component), lay.apiserver_url,
                         lay.pki.ca.cert, lay.pki.clients[component], component)
    lay.kwok_config.write_text(kwok.config_yaml())
    cluster = DevCluster(directory=directory, bin_dir=bin_dir, kubeconfig=admin, processes=[],
                         kubectl_path=binaries.kubectl(), ports=dict(vars(lay.ports)),
                         apiserver_host=lay.apiserver_host, real_node=node_state)
    cluster.save()
    return cluster, lay


def _cluster_alive(node_directory: str) -> bool:
    """Whether the cluster owning a real node (recorded by its node directory) still runs."""
    cluster = DevCluster.load(Path(node_directory).parent)
    return cluster is not None and any(processes.is_alive(r) for r in cluster.processes)


def _node_layout(directory: Path) -> realnode.NodeLayout:
    # containerd's root (image content and snapshots) outlives clusters: images imported once
    # are not imported again.
    return realnode.NodeLayout(directory=directory / "real-node",
                               containerd_root=images.cache_dir() / "containerd")


def _launcher(cluster: DevCluster, die_with_parent: bool) -> Callable[[str, list[str]], None]:
    def launch(name: str, argv: list[str]) -> None:
        proc, record = processes.spawn(name, argv, cluster.directory / "logs" / f"{name}.log",
                                       die_with_parent=die_with_parent)
        cluster._children[proc.pid] = proc
        cluster.processes.append(record)
        cluster.save()  # after every start, so `down` can always find it
    return launch


REAL_NODE_READY_S = 120


def _start_real_node(cluster: DevCluster, lay: components.Layout, node_images: images.Images,
                     deadline: float, log: Log, die_with_parent: bool) -> None:
    launch = _launcher(cluster, die_with_parent)
    waiter = _Waiter(cluster, deadline)
    node = _node_layout(cluster.directory)
    metrics_port, health_port = free_ports(2)
    realnode.write_configs(node, node_images.pause, cluster.kubeconfig, (metrics_port, health_port))
    log(f"starting containerd ({node.socket})")
    launch("containerd", realnode.containerd_argv(node))
    waiter.until("containerd ready", lambda: realnode.containerd_ready(node.socket))
    log("importing the images into containerd")
    images.build(node.socket, quiet=True)
    # importing layers the node lacks takes minutes after a source change: like the build, it is
    # not part of the readiness timeout (the node then has REAL_NODE_READY_S to become Ready)
    waiter = _Waiter(cluster, max(deadline, time.monotonic() + REAL_NODE_READY_S))
    log(f"starting kubelet and kube-proxy (node {realnode.NODE_NAME} at {realnode.GATEWAY})")
    launch("kubelet", realnode.kubelet_argv(node, lay.bin_dir, cluster.kubeconfig))
    launch("kube-proxy", realnode.kube_proxy_argv(node, lay.bin_dir))
    waiter.until("real node Ready", lambda: _nodes_ready(cluster, [realnode.NODE_NAME]))
    # No device plugin: advertise fake GPUs so that GPU pods are admitted (they run on the CPU).
    gpu = kwok.GPU_RESOURCE.replace("/", "~1")
    patch = json.dumps([{"op": "add", "path": f"/status/capacity/{gpu}", "value": str(realnode.FAKE_GPUS)}])
    cluster.kubectl("patch", "node", realnode.NODE_NAME, "--subresource=status", "--type=json",
                    "-p", patch)
    taint = realnode.KWOK_TAINT
    cluster.kubectl("taint", "nodes", "-l", "type=kwok",
                    f"{taint['key']}={taint['value']}:{taint['effect']}")
    waiter.until("fake GPUs allocatable on the real node",
                 lambda: _allocatable(cluster, realnode.NODE_NAME, kwok.GPU_RESOURCE) > 0)
    log(f"real node {realnode.NODE_NAME} ready")


def _allocatable(cluster: DevCluster, node: str, resource: str) -> int:
    out = cluster.kubectl("get", "node", node, "-o", "json", check=False)
    if out.returncode != 0:
        return 0
    return int(json.loads(out.stdout)["status"].get("allocatable", {}).get(resource, 0))


def _start_all(cluster: DevCluster, lay: components.Layout, nodes: int, gpus_per_node: int,
               deadline: float, log: Log, die_with_parent: bool) -> None:
    launch = _launcher(cluster, die_with_parent)
    waiter = _Waiter(cluster, deadline)
    log(f"starting etcd on {lay.etcd_url}")
    launch("etcd", components.etcd(lay))
    waiter.until("etcd healthy", lambda: _http_ok(f"{lay.etcd_url}/health"))

    log(f"starting kube-apiserver on {lay.apiserver_url}")
    launch("kube-apiserver", components.kube_apiserver(lay))
    admin_tls = _client_tls(lay.pki.ca.cert, lay.pki.clients["admin"])
    waiter.until("kube-apiserver ready", lambda: _http_ok(f"{lay.apiserver_url}/readyz", admin_tls))

    log("starting kube-controller-manager, kube-scheduler and kwok")
    launch("kube-controller-manager", components.kube_controller_manager(lay))
    launch("kube-scheduler", components.kube_scheduler(lay))
    launch("kwok", components.kwok(lay))
    insecure = ssl._create_unverified_context()  # self-signed serving certs of the components
    waiter.until("kube-controller-manager healthy", lambda: _http_ok(
        f"https://127.0.0.1:{lay.ports.controller_manager}/healthz", insecure))
    waiter.until("kube-scheduler healthy", lambda: _http_ok(
        f"https://127.0.0.1:{lay.ports.scheduler}/healthz", insecure))
    waiter.until("kwok healthy", lambda: _http_ok(f"http://127.0.0.1:{lay.ports.kwok}/healthz"))

    names = [f"kwok-gpu-{i}" for i in range(nodes)]
    log(f"creating {nodes} fake GPU nodes ({gpus_per_node} x {kwok.GPU_RESOURCE} each)")
    manifests = [kwok.node_manifest(name, gpus_per_node) for name in names]
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(manifests))
    waiter.until("nodes Ready", lambda: _nodes_ready(cluster, names))
    # Pods are refused until the ServiceAccount controller has made the namespace's default SA.
    waiter.until("default ServiceAccount", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0)
    log(f"ready: KUBECONFIG={cluster.kubeconfig}")


class _Waiter:
    """Poll a condition until the deadline, failing fast (with its log) if a process died."""

    def __init__(self, cluster: DevCluster, deadline: float) -> None:
        self.cluster = cluster
        self.deadline = deadline

    def until(self, what: str, check: Callable[[], bool]) -> None:
        while True:
            for record in self.cluster.processes:
                if not processes.is_alive(record):
                    tail = _tail(Path(record.log))
                    error = _PortTaken if "address already in use" in tail else SpecdError
                    raise error(f"{record.name} exited while waiting for {what}; "
                                f"last lines of {record.log}:\n{tail}")
            try:
                if check():
                    return
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            if time.monotonic() > self.deadline:
                logs = "\n".join(f"--- {r.log}\n{_tail(Path(r.log), 10)}"
                                 for r in self.cluster.processes)
                raise SpecdError(f"dev cluster not ready: timed out waiting for {what}\n{logs}")
            time.sleep(0.25)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _client_tls(ca: Path, client: pki.KeyPair) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    return context


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return response.status == 200
    except urllib.error.URLError:
        return False


def _nodes_ready(cluster: DevCluster, names: list[str]) -> bool:
    result = cluster.kubectl("get", "nodes", "-o", "json", check=False)
    if result.returncode != 0:
        return False
    ready = {
        item["metadata"]["name"]
        for item in json.loads(result.stdout)["items"]
        for cond in item.get("status", {}).get("conditions", [])
        if cond["type"] == "Ready" and cond["status"] == "True"
    }
    return set(names) <= ready
