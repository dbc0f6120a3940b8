"""Router configuration: the YAML file the operator mounts (/etc/specd/router.yaml) and its defaults.

The file's keys, values, bounds and defaults are declared in `specd.contract` (which also builds
the CRD from them); keys are camelCase, as in the SpecDecodingService's `scheduling` block:
  policy: laps-sd | fcfs | las | sjf
  speculation: {mode: goodput | fixed | none, k: 4, maxK: 8}
      mode `off` (or YAML's false) is an alias of none; `fixed:K` is accepted as a mode; k in
      [0, 16], maxK in [1, 16]
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

from specd import contract
from specd.contract import (
    DISCOVERY_DRAFT_PORT,
    DISCOVERY_TARGET_PORT,
    FIRST_QUANTUM,
    MAX_BATCH_SIZE,
    MAX_K_RANGE,
    MAX_QUEUED_REQUESTS,
    PIPELINE_DEPTH,
    POLICIES,
    QUANTUM_GROWTH,
    QUEUES,
    SPECULATION_MODES,
    STABILITY_THRESHOLD,
    STABILITY_WINDOW,
    K,
)
from specd.errors import SpecdError


@dataclass(frozen=True)
class QueueSettings:
    """Multi-level feedback queues on attained service, counted in target iterations.

    Not published by LAPS-SD; our defaults: 4 queues, a request leaves queue i after
    first_quantum * growth**i iterations in it. Also used by the acceptance-blind `las` policy.
    """

    queues: int = QUEUES.default
    first_quantum: int = FIRST_QUANTUM.default
    growth: float = QUANTUM_GROWTH.default
    # a request is "perceptible" once its acceptance EMA moved less than `threshold` over `window` iterations
    stability_window: int = STABILITY_WINDOW.default
    stability_threshold: float = STABILITY_THRESHOLD.default

    def level(self, attained_iterations: int) -> int:
        bound, quantum = 0.0, float(self.first_quantum)
        for level in range(self.queues - 1):
            bound += quantum
            if attained_iterations < bound:
                return level
            quantum *= self.growth
        return self.queues - 1


@dataclass(frozen=True)
class DiscoverySettings:
    namespace: str = ""
    target_service: str = ""
    draft_service: str = ""
    target_port: int = DISCOVERY_TARGET_PORT.default
    draft_port: int = DISCOVERY_DRAFT_PORT.default


@dataclass(frozen=True)
class RouterConfig:
    """The router's settings. Every instance is checked against the contract (so are the copies
    `dataclasses.replace` makes), and `speculation` holds the canonical mode (`off` -> `none`)."""

    policy: str = contract.DEFAULT_POLICY
    speculation: str = contract.DEFAULT_SPECULATION_MODE  # none | fixed | goodput
    k: int = K.default  # fixed mode's k
    max_k: int = MAX_K_RANGE.default  # goodput's upper bound
    max_batch_size: int = MAX_BATCH_SIZE.default
    max_queued_requests: int = MAX_QUEUED_REQUESTS.default
    pipeline_depth: int = PIPELINE_DEPTH.default
    queues: QueueSettings = field(default_factory=QueueSettings)
    discovery: DiscoverySettings | None = None

    def __post_init__(self) -> None:
        checked = contract.parse_router_config(self.to_dict())
        object.__setattr__(self, "speculation", checked.speculation.mode)
        object.__setattr__(self, "k", checked.speculation.k)

    def to_dict(self) -> dict[str, Any]:
        """The configuration file's form (camelCase keys) of this configuration."""
        q, d = self.queues, self.discovery
        raw: dict[str, Any] = {
            "policy": self.policy,
            "speculation": {"mode": self.speculation, "k": self.k, "maxK": self.max_k},
            "maxBatchSize": self.max_batch_size, "maxQueuedRequests": self.max_queued_requests,
            "pipelineDepth": self.pipeline_depth,
            "lapsSd": {"queues": q.queues, "firstQuantum": q.first_quantum, "quantumGrowth": q.growth,
                       "stabilityWindow": q.stability_window, "stabilityThreshold": q.stability_threshold},
        }
        if d is not None:
            raw["discovery"] = {"namespace": d.namespace, "targetService": d.target_service,
                                "draftService": d.draft_service, "targetPort": d.target_port,
                                "draftPort": d.draft_port}
        return raw

    @property
    def k_limit(self) -> int:
        """The most drafts a request may take per iteration (its own speculation.max_k may lower it)."""
        return self.k if self.speculation == "fixed" else self.max_k

    @property
    def speculation_label(self) -> str:
        return contract.speculation_label(self.speculation, self.k)

    def with_speculation(self, spec: str) -> "RouterConfig":
        """`none` (alias `off`), `goodput` or `fixed:K` (as on the command line)."""
        try:
            mode, k = contract.parse_speculation(spec)
        except ValueError as exc:
            raise SpecdError(f"speculation {exc}") from None
        return replace(self, speculation=mode, k=self.k if k is None else k)


def load_config(path: str | Path) -> RouterConfig:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpecdError(f"router config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SpecdError(f"router config {path} is not valid YAML: {exc}") from None
    return config_from_dict({} if raw is None else raw)


def config_from_dict(raw: dict[str, Any]) -> RouterConfig:
    """A RouterConfig from the parsed YAML; SpecdError naming the field when a value is refused."""
    return _from_file(contract.parse_router_config(raw))


def _from_file(f: contract.RouterConfigFile) -> RouterConfig:
    s, q, d = f.speculation, f.laps_sd, f.discovery
    return RouterConfig(
        policy=f.policy, speculation=s.mode, k=s.k, max_k=s.max_k, max_batch_size=f.max_batch_size,
        max_queued_requests=f.max_queued_requests, pipeline_depth=f.pipeline_depth,
        queues=QueueSettings(queues=q.queues, first_quantum=q.first_quantum, growth=q.quantum_growth,
                             stability_window=q.stability_window, stability_threshold=q.stability_threshold),
        discovery=None if d is None else DiscoverySettings(namespace=d.namespace, target_service=d.target_service,
                                                   draft_service=d.draft_service, target_port=d.target_port,
                                                   draft_port=d.draft_port))


__all__ = ["RouterConfig", "QueueSettings", "DiscoverySettings", "load_config", "config_from_dict", "POLICIES",
           "SPECULATION_MODES"]
