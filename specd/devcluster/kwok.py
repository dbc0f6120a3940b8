"""KWOK configuration: the fake GPU nodes and the stages that play kubelet for them.

kwok watches the nodes carrying the `kwok.x-k8s.io/node: fake` annotation and the pods bound to
them, and applies the first matching Stage: it writes the status a kubelet would have written.
The stages here are the minimum a controller test needs: nodes become Ready (and stay Ready via
node leases plus a periodic heartbeat), pods become Running, Job pods complete, and deleted pods
go away instead of hanging in Terminating.
"""

from __future__ import annotations

import yaml

NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"

_STAGE_API = "kwok.x-k8s.io/v1alpha1"

# Node: Ready with the conditions a healthy kubelet reports; capacity stays what was created.
_NODE_STATUS = """\
{{ $now := Now }}
conditions:
- {type: Ready, status: "True", reason: KubeletReady, message: "kwok fake kubelet is ready",
   lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
{{ range list "MemoryPressure" "DiskPressure" "PIDPressure" "NetworkUnavailable" }}
- {type: {{ . }}, status: "False", reason: {{ printf "KubeletHasNo%s" . }}, message: "",
   lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
{{ end }}
addresses:
- {type: InternalIP, address: {{ NodeIP | Quote }}}
- {type: Hostname, address: {{ .metadata.name | Quote }}}
allocatable: {{ .status.allocatable | toJson }}
capacity: {{ .status.capacity | toJson }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: kwok
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
"""

# Pod: every container started and ready, an address from kwok's pod CIDR.
_POD_RUNNING = """\
{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
conditions:
{{ range list "PodScheduled" "Initialized" "ContainersReady" "Ready" }}
- {type: {{ . }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ end }}
{{ range .spec.readinessGates }}
- {type: {{ .conditionType | Quote }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
"""

# Pod of a Job (restartPolicy other than Always): its containers exit 0 shortly after starting.
_POD_SUCCEEDED = """\
{{ $now := Now }}
phase: Succeeded
conditions:
{{ range list "Ready" "ContainersReady" }}
- {type: {{ . }}, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
"""


def _stage(name: str, kind: str, expressions: list[dict], next_: dict,
           delay_ms: int | None = None) -> dict:
    spec: dict = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": next_,
    }
    if delay_ms is not None:
        spec["delay"] = {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": delay_ms}
    return {"apiVersion": _STAGE_API, "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _absent(key: str) -> dict:
    return {"key": key, "operator": "DoesNotExist"}


def _present(key: str) -> dict:
    return {"key": key, "operator": "Exists"}


_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def stages() -> list[dict]:
    return [
        _stage("specd-node-ready", "Node",
               [{"key": _READY, "operator": "NotIn", "values": ["True"]}],
               {"statusTemplate": _NODE_STATUS}),
        # Re-stamp the conditions now and then; with node leases this is belt and braces.
        _stage("specd-node-heartbeat", "Node",
               [{"key": _READY, "operator": "In", "values": ["True"]}],
               {"statusTemplate": _NODE_STATUS}, delay_ms=20_000),
        _stage("specd-pod-running", "Pod",
               [_absent(".metadata.deletionTimestamp"), _absent(".status.podIP"),
                _present(".spec.nodeName")],
               {"statusTemplate": _POD_RUNNING}),
        _stage("specd-pod-succeeded", "Pod",
               [_absent(".metadata.deletionTimestamp"),
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".spec.restartPolicy", "operator": "In", "values": ["Never", "OnFailure"]},
                # Only Job pods: bare pods with restartPolicy Never keep running, like servers.
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]}],
               {"statusTemplate": _POD_SUCCEEDED}, delay_ms=1_000),
        # No kubelet will ever confirm the shutdown, so finish the deletion ourselves.
        _stage("specd-pod-delete", "Pod",
               [_present(".metadata.deletionTimestamp")],
               {"finalizers": {"empty": True}, "delete": True}),
    ]


def config_yaml() -> str:
    """The kwok --config file: the stages above (other options are passed as flags)."""
    return yaml.safe_dump_all(stages(), sort_keys=False)


def node_manifest(name: str, gpus: int, cpu: str = "32", memory: str = "256Gi",
                  pods: str = "110") -> dict:
    """A fake node managed by kwok, with `gpus` allocatable nvidia.com/gpu."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods, GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {NODE_ANNOTATION: NODE_ANNOTATION_VALUE,
                            "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
            },
        },
        "spec": {},
        # A node's status is kept on create (a kubelet registers this way); kwok keeps it.
        "status": {"allocatable": resources, "capacity": dict(resources)},
    }
