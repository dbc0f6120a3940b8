"""One real Kubernetes node next to the kwok nodes: containerd + runc + CNI bridge + kubelet +
kube-proxy, started as processes with their own configuration and state under the cluster's
directory, and removed again with no leftovers on the host.

Networking: pods live on the bridge `specd0` (10.88.0.0/16); the host's address on it,
10.88.0.1, is the node's InternalIP, the address the kubelet serves on and the address the API
server advertises, so the in-cluster `kubernetes` Service (10.96.0.1:443, programmed by
kube-proxy) reaches the API server from pods. Nothing listens on the host's other interfaces
except the API server, which binds all addresses in this mode (TLS with client certificates).

Facts this is built on (measured on this kind of VM): `../shared/notes/real-node.md`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from specd.errors import SpecdError

BRIDGE = "specd0"
GATEWAY = "10.88.0.1"  # the host on the pod network: node IP, API server's advertised address
POD_SUBNET = "10.88.0.0/16"
NODE_NAME = "specd-node-0"
NODE_LABEL = "specd.io/real-node"
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# Kubernetes has no GPU here: the node advertises this many fake nvidia.com/gpu so that pods
# written for GPU clusters are admitted; the workers run on the CPU.
FAKE_GPUS = 8
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
# Which cluster holds the host's real node (the bridge, iptables, sysctls): a run killed before
# its teardown leaves them behind, and the next start cleans them up from this record.
OWNER_FILE = Path("/run/specd-real-node.json")
_HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "umount")


class RealNodeUnavailable(SpecdError):
    """A real node cannot run here (not root, missing packages or binaries)."""


@dataclass
class NodeLayout:
    directory: Path  # <cluster>/real-node
    containerd_root: Path  # persistent (images survive clusters): $SPECD_CACHE/containerd

    @property
    def socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.directory / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"


@dataclass
class NodeState:
    """What teardown needs, saved in the cluster's state.json."""

    directory: str
    socket: str
    sysctls: dict[str, str]  # values before we changed them

    def to_json(self) -> dict:
        return asdict(self)


def check_host(bin_dir: Path) -> None:
    """Raise RealNodeUnavailable naming what is missing."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (containers, bridge, iptables)")
    missing = [t for t in _HOST_TOOLS if shutil.which(t) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)} (apt-get install containerd runc "
                        "containernetworking-plugins iptables)")
    if not (CNI_BIN_DIR / "bridge").exists():
        problems.append(f"no CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)")
    absent = [b for b in ("kubelet", "kube-proxy") if not os.access(bin_dir / b, os.X_OK)]
    if absent:
        problems.append(f"{bin_dir} lacks {', '.join(absent)} (make testbins)")
    if problems:
        raise RealNodeUnavailable("a real node cannot run here: " + "; ".join(problems))


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise SpecdError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# --- host network ---------------------------------------------------------------------------

def bridge_exists() -> bool:
    return _run("ip", "link", "show", BRIDGE, check=False).returncode == 0


def create_network(state: NodeState, owner_alive: Callable[[str], bool]) -> None:
    """The bridge with the gateway address (the node IP must exist before kubelet starts) and
    the sysctls pods need; their previous values go into `state.sysctls`. Leftovers of a real node whose
    cluster died without its teardown are removed first; a live one is refused."""
    if OWNER_FILE.exists():
        previous = NodeState(**json.loads(OWNER_FILE.read_text()))
        if owner_alive(previous.directory):
            raise SpecdError(f"another real node is running (cluster {Path(previous.directory).parent}); "
                             "stop it with `specd dev-cluster down`")
        cleanup_host(previous)
    elif bridge_exists():
        raise SpecdError(f"bridge {BRIDGE} exists but no dev cluster owns it; remove it with "
                         f"`ip link del {BRIDGE}`")
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    saved = {}
    for key, value in _SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if path.exists():
            saved[key] = path.read_text().strip()
            path.write_text(value)
    state.sysctls = saved
    OWNER_FILE.write_text(json.dumps(state.to_json()))


def _remove_network(sysctls: dict[str, str]) -> None:
    for key, value in sysctls.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            path.write_text(value)
        except OSError:
            pass
    for veth in _links_on_bridge():
        _run("ip", "link", "del", veth, check=False)
    _run("ip", "link", "del", BRIDGE, check=False)
    _remove_iptables_chains()


def _links_on_bridge() -> list[str]:
    out = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _remove_iptables_chains() -> None:
    """kubelet's and kube-proxy's KUBE-* chains and the CNI plugins' CNI-* chains."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            rules = _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
            ours = [r for r in rules if r.startswith("-A ") and ("KUBE-" in r or "CNI-" in r)
                    and not r.split()[1].startswith(("KUBE-", "CNI-"))]
            for rule in ours:  # jumps from the built-in chains (comments are quoted)
                _run(tool, "-w", "-t", table, "-D", *shlex.split(rule[3:]), check=False)
            chains = [r.split()[1] for r in rules if r.startswith("-N ")
                      and r.split()[1].startswith(("KUBE-", "CNI-"))]
            for chain in chains:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)


# --- configuration files --------------------------------------------------------------------

def write_configs(lay: NodeLayout, pause_image: str, kubeconfig: Path, proxy_ports: tuple[int, int]) -> None:
    (lay.directory / "containerd").mkdir(parents=True, exist_ok=True)
    lay.containerd_root.mkdir(parents=True, exist_ok=True)
    lay.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    lay.kubelet_root.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    (lay.directory / "containerd" / "config.toml").write_text(f"""\
version = 2
root = "{lay.containerd_root}"
state = "{lay.directory / 'containerd' / 'state'}"
[grpc]
  address = "{lay.socket}"
[ttrpc]
  address = "{lay.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{lay.directory / 'containerd' / 'opt'}"
[{cri}]
  sandbox_image = "{pause_image}"
  # This VM withholds CAP_SYS_RESOURCE: nobody may lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{lay.cni_conf_dir}"
""")
    conflist = {
        "cniVersion": "0.4.0",
        "name": "specd",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(lay.directory / "cni" / "ipam"),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (lay.cni_conf_dir / "10-specd.conflist").write_text(json.dumps(conflist, indent=2))
    # Anonymous, allow-all kubelet API on the bridge address only, so that the API server can
    # proxy `kubectl logs/exec` without a kubelet client certificate.
    (lay.directory / "kubelet.yaml").write_text(f"""\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{lay.socket}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
address: {GATEWAY}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: /etc/resolv.conf
""")
    metrics, health = proxy_ports
    (lay.directory / "kube-proxy.yaml").write_text(f"""\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kubeconfig}"}}
mode: iptables
clusterCIDR: {POD_SUBNET}
hostnameOverride: {NODE_NAME}
bindAddress: 127.0.0.1
metricsBindAddress: 127.0.0.1:{metrics}
healthzBindAddress: 127.0.0.1:{health}
conntrack: {{maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
""")


def containerd_argv(lay: NodeLayout) -> list[str]:
    return [shutil.which("containerd") or "containerd", "--config",
            str(lay.directory / "containerd" / "config.toml")]


def kubelet_argv(lay: NodeLayout, bin_dir: Path, kubeconfig: Path) -> list[str]:
    return [str(bin_dir / "kubelet"), f"--config={lay.directory / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={lay.kubelet_root}",
            f"--cert-dir={lay.directory / 'kubelet-pki'}", f"--node-ip={GATEWAY}",
            f"--hostname-override={NODE_NAME}", f"--node-labels={NODE_LABEL}=true", "--v=1"]


def kube_proxy_argv(lay: NodeLayout, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "kube-proxy"), f"--config={lay.directory / 'kube-proxy.yaml'}", "--v=1"]


def ctr(socket: Path | str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ctr", "--address", str(socket), "-n", "k8s.io", *args, check=check)


def containerd_ready(socket: Path) -> bool:
    return socket.exists() and ctr(socket, "version", check=False).returncode == 0


# --- teardown -------------------------------------------------------------------------------

def kill_containers(socket: Path | str) -> None:
    """Every task and container of the k8s.io namespace (what kubelet left behind)."""
    if not Path(socket).exists():
        return
    for cid in ctr(socket, "containers", "ls", "-q", check=False).stdout.split():
        ctr(socket, "tasks", "delete", "--force", cid, check=False)  # kills a running task
        ctr(socket, "containers", "delete", cid, check=False)


def cleanup_host(state: NodeState) -> None:
    """After every process stopped: stray container processes and shims, mounts, network
    namespaces, the bridge, iptables chains, cgroups. Safe to run twice."""
    directory = Path(state.directory)
    _kill_strays(directory)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(directory))]
    for mount in sorted(mounts, key=len, reverse=True):  # innermost first
        _run("umount", "-l", mount, check=False)
    _remove_network(state.sysctls)
    _remove_cgroups()
    OWNER_FILE.unlink(missing_ok=True)


def _kill_strays(directory: Path) -> None:
    """What outlives a containerd killed without teardown: the processes of the pods' cgroups
    and the runc shims started for this node's containerd."""
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmdline and str(directory) in cmdline:
                pids.add(int(proc.name))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pids:
        time.sleep(0.5)


def _remove_cgroups() -> None:
    """The empty kubepods (kubelet) and k8s.io (containerd) trees in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    for top in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for name in ("kubepods", "k8s.io"):
            tree = top / name
            if tree.is_dir():
                for dirpath, _dirs, _files in sorted(os.walk(tree), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass
