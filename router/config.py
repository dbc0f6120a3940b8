"""Router configuration: the YAML file the operator mounts (/etc/specd/router.yaml) and its defaults.

Keys (camelCase, as in the SpecDecodingService's `scheduling` block):
  policy: laps-sd | fcfs | las | sjf
  speculation: {mode: goodput | fixed | off, k: 4, maxK: 8}      (`fixed:K` is accepted as a mode)
  maxBatchSize: 8                 requests in one iteration batch
  maxQueuedRequests: 256          admitted and unfinished requests; beyond -> RESOURCE_EXHAUSTED
  pipelineDepth: 2                batches in flight per target replica (drafting overlaps verifying)
  lapsSd: {queues: 4, firstQuantum: 8, quantumGrowth: 2, stabilityWindow: 8, stabilityThreshold: 0.02}
  discovery: {namespace, targetService, draftService, targetPort, draftPort}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from specd.errors import SpecdError

POLICIES = ("laps-sd", "fcfs", "las", "sjf")
SPECULATION_MODES = ("goodput", "fixed", "off")
MAX_K_LIMIT = 16  # the engine's MAX_K


@dataclass(frozen=True)
class QueueSettings:
    """Multi-level feedback queues on attained service, counted in target iterations.

    Not published by LAPS-SD; our defaults: 4 queues, a request leaves queue i after
    first_quantum * growth**i iterations in it. Also used by the acceptance-blind `las` policy.
    """

    queues: int = 4
    first_quantum: int = 8
    growth: float = 2.0
    # a request is "perceptible" once its acceptance EMA moved less than `threshold` over `window` iterations
    stability_window: int = 8
    stability_threshold: float = 0.02

    def level(self, attained_iterations: int) -> int:
        bound, quantum = 0.0, float(self.first_quantum)
        for level in range(self.queues - 1):
            bound += quantum
            if attained_iterations < bound:
                return level
            quantum *= self.growth
        return self.queues - 1


@dataclass(frozen=True)
class Discovery:
    namespace: str = ""
    target_service: str = ""
    draft_service: str = ""
    target_port: int = 50052
    draft_port: int = 50053


@dataclass(frozen=True)
class RouterConfig:
    policy: str = "laps-sd"
    speculation: str = "goodput"  # off | fixed | goodput
    k: int = 4  # fixed mode's k
    max_k: int = 8  # goodput's upper bound
    max_batch_size: int = 8
    max_queued_requests: int = 256
    pipeline_depth: int = 2
    queues: QueueSettings = field(default_factory=QueueSettings)
    discovery: Discovery | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SpecdError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.speculation not in SPECULATION_MODES:
            raise SpecdError(f"speculation mode {self.speculation!r} is not one of {', '.join(SPECULATION_MODES)}")
        for name, value, low, high in [("speculation.k", self.k, 0, MAX_K_LIMIT),
                                       ("speculation.maxK", self.max_k, 0, MAX_K_LIMIT),
                                       ("maxBatchSize", self.max_batch_size, 1, 4096),
                                       ("maxQueuedRequests", self.max_queued_requests, 1, 10**6),
                                       ("pipelineDepth", self.pipeline_depth, 1, 8)]:
            if not low <= value <= high:
                raise SpecdError(f"router config: {name} must be in [{low}, {high}], got {value}")

    @property
    def speculation_label(self) -> str:
        return f"fixed:{self.k}" if self.speculation == "fixed" else self.speculation

    def with_speculation(self, spec: str) -> "RouterConfig":
        """`off`, `goodput` or `fixed:K` (as on the command line)."""
        mode, _, k = spec.partition(":")
        if mode == "fixed":
            if not k.isdigit():
                raise SpecdError(f"speculation {spec!r}: write fixed:K, e.g. fixed:4")
            return replace(self, speculation="fixed", k=int(k))
        if k:
            raise SpecdError(f"speculation {spec!r}: only fixed takes a k (fixed:K)")
        return replace(self, speculation=mode)


def _pick(raw: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        kinds = {int: "an integer", float: "a number", str: "a string"}
        raise SpecdError(f"router config: {key} must be {kinds.get(kind, kind.__name__)}, got {value!r}") from None


def load_config(path: str | Path) -> RouterConfig:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SpecdError(f"router config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SpecdError(f"router config {path} is not valid YAML: {exc}") from None
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> RouterConfig:
    if not isinstance(raw, dict):
        raise SpecdError("router config must be a mapping")
    d = RouterConfig()
    spec = raw.get("speculation") or {}
    mode = str(spec.get("mode", d.speculation))
    config = RouterConfig(
        policy=_pick(raw, "policy", str, d.policy),
        k=_pick(spec, "k", int, d.k),
        max_k=_pick(spec, "maxK", int, d.max_k),
        max_batch_size=_pick(raw, "maxBatchSize", int, d.max_batch_size),
        max_queued_requests=_pick(raw, "maxQueuedRequests", int, d.max_queued_requests),
        pipeline_depth=_pick(raw, "pipelineDepth", int, d.pipeline_depth),
        queues=_queues(raw.get("lapsSd") or {}),
        discovery=_discovery(raw["discovery"]) if raw.get("discovery") else None,
    )
    if mode.startswith("fixed:"):
        return config.with_speculation(mode)
    return replace(config, speculation=mode)


def _queues(raw: dict[str, Any]) -> QueueSettings:
    d = QueueSettings()
    return QueueSettings(queues=_pick(raw, "queues", int, d.queues),
                         first_quantum=_pick(raw, "firstQuantum", int, d.first_quantum),
                         growth=_pick(raw, "quantumGrowth", float, d.growth),
                         stability_window=_pick(raw, "stabilityWindow", int, d.stability_window),
                         stability_threshold=_pick(raw, "stabilityThreshold", float, d.stability_threshold))


def _discovery(raw: dict[str, Any]) -> Discovery:
    d = Discovery()
    return Discovery(namespace=_pick(raw, "namespace", str, d.namespace),
                     target_service=_pick(raw, "targetService", str, d.target_service),
                     draft_service=_pick(raw, "draftService", str, d.draft_service),
                     target_port=_pick(raw, "targetPort", int, d.target_port),
                     draft_port=_pick(raw, "draftPort", int, d.draft_port))


__all__ = ["RouterConfig", "QueueSettings", "Discovery", "load_config", "config_from_dict", "POLICIES",
           "SPECULATION_MODES", "fields"]
