"""The serving contract, declared once: what a SpecDecodingService, the router configuration file,
the command lines and the workers accept.

- enums: scheduling policies, speculation modes, draft methods;
- bounds and defaults of every number a user sets (k, maxK, maxBatchSize, replicas, ports, ...);
- the router configuration file (`specd router --config`, the ConfigMap the operator renders):
  pydantic models with the camelCase keys of the resource's `scheduling` block, and
  `parse_router_config`, whose errors name the field (`speculation.maxK must be ≤ 16, got 20`).

`operator/crd.py` builds the CRD schema from these values, `router/config.py` parses with these
models, the CLIs take their choices and defaults from here and the worker engine its k limit, so
the schema admits exactly what the router and the workers run. Light on purpose: the standard
library and pydantic only (the operator image imports it; no torch, no grpc).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from specd.errors import SpecdError

# --- enums ------------------------------------------------------------------------------------

Policy = Literal["laps-sd", "fcfs", "las", "sjf"]
POLICIES: tuple[str, ...] = get_args(Policy)
DEFAULT_POLICY: Policy = "laps-sd"

# "none": no speculation (as draft.method none). The CRD admits only these spellings; the router
# configuration and the command lines also take the aliases (YAML reads an unquoted `off` as the
# boolean false, which the router configuration reads as "none" too).
SpeculationMode = Literal["goodput", "fixed", "none"]
SPECULATION_MODES: tuple[str, ...] = get_args(SpeculationMode)
SPECULATION_MODE_ALIASES = {"off": "none"}
DEFAULT_SPECULATION_MODE: SpeculationMode = "goodput"

# model: a separate draft model in its own pool; early-exit (Kangaroo), hierarchical (HiSpec) and
# ngram (prompt lookup) draft inside the target worker; specee (SpecEE) exits early inside the
# target, approximately; none: plain decoding.
DRAFT_METHODS = ("model", "early-exit", "hierarchical", "ngram", "specee", "none")
DEFAULT_DRAFT_METHOD = "model"
# the methods whose drafts come from a separate pool of draft workers
DRAFT_POOL_METHODS = ("model",)
# the methods that draft k tokens inside the target worker and verify them (exact)
TARGET_DRAFT_METHODS = ("early-exit", "hierarchical", "ngram")
# the methods whose output may differ from the target's own (one token per step, no speculation)
APPROXIMATE_METHODS = ("specee",)
# the methods run by the target worker itself (it loads what they need)
IN_TARGET_METHODS = TARGET_DRAFT_METHODS + APPROXIMATE_METHODS
# every method but plain decoding (what `specd bench decode` races against plain decoding)
DRAFTING_METHODS = tuple(m for m in DRAFT_METHODS if m != "none")


# --- bounds and defaults ------------------------------------------------------------------------

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class Range(Generic[N]):
    """An inclusive range of a number and its default (maximum None: no upper bound)."""

    minimum: N
    maximum: N | None
    default: N

    def __contains__(self, value: object) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= self.minimum
                and (self.maximum is None or value <= self.maximum))

    def describe(self) -> str:
        return f"[{self.minimum}, {self.maximum}]" if self.maximum is not None else f"≥ {self.minimum}"


MAX_K = 16  # the engine's limit on draft tokens per request and iteration
K = Range(0, MAX_K, default=4)  # speculation.k: fixed mode's k (0: no drafts), goodput's starting point
MAX_K_RANGE = Range(1, MAX_K, default=8)  # speculation.maxK: goodput's upper bound
MAX_BATCH_SIZE = Range(1, 4096, default=8)  # requests in one iteration batch (router and local CLIs)
# A SpecDecodingService's default batch: GPU targets batch more than the CPU-sized local default.
CLUSTER_MAX_BATCH_SIZE_DEFAULT = 32
MAX_QUEUED_REQUESTS = Range(1, 10**6, default=256)  # admitted, unfinished requests per router
PIPELINE_DEPTH = Range(1, 8, default=2)  # batches in flight per target replica
# LAPS-SD's multi-level feedback queues (router config `lapsSd`)
QUEUES = Range(1, 64, default=4)
FIRST_QUANTUM = Range(1, 10**6, default=8)
QUANTUM_GROWTH = Range(1.0, None, default=2.0)
STABILITY_WINDOW = Range(1, 10**6, default=8)
STABILITY_THRESHOLD = Range(0.0, None, default=0.02)

# Autoscaling of the target and draft pools (`spec.autoscaling`, off unless enabled; the operator's
# decisions are operator/autoscaling.py). While it is on the operator owns both pools' replicas.
AUTOSCALE_TARGET_MIN_REPLICAS = Range(1, 1024, default=1)
AUTOSCALE_TARGET_MAX_REPLICAS = Range(1, 1024, default=4)
AUTOSCALE_DRAFT_MIN_REPLICAS = Range(0, 1024, default=0)
AUTOSCALE_DRAFT_MAX_REPLICAS = Range(0, 1024, default=4)
# target pool: requests in the router (queued + running) per target replica it aims for
AUTOSCALE_QUEUE_PER_TARGET = Range(0.5, 4096.0, default=4.0)
# target pool, optional: mean time to first token (seconds) above which it grows
AUTOSCALE_TTFT_SECONDS = Range(0.0, 3600.0, default=0.0)  # 0: no TTFT objective
# draft pool: the share of its time a draft replica spends drafting that the pool aims for
AUTOSCALE_DRAFT_UTILISATION = Range(0.05, 1.0, default=0.6)
# stabilisation: a pool grows to the lowest and shrinks to the highest recommendation of the window
AUTOSCALE_SCALE_UP_WINDOW_SECONDS = Range(0, 3600, default=30)
AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS = Range(0, 3600, default=300)

# Where a worker's model runs: `auto` is CUDA with bfloat16 when a GPU is visible, else the CPU
# with float32 (worker/device.py resolves it); `cuda:N` names one GPU.
DEVICE_KINDS = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEFAULT_DTYPE = "auto"

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)  # GPUs of one target pod: powers of two
TENSOR_PARALLEL_SIZE = Range(1, 64, default=1)
TARGET_REPLICAS = Range(0, 1024, default=1)
DRAFT_REPLICAS = Range(0, 1024, default=1)
DRAFT_GPUS = Range(0, 8, default=1)  # GPUs per draft pod (0: CPU)
ROUTER_REPLICAS = Range(1, 64, default=1)
ROUTER_PORT = Range(1, 65535, default=50051)  # the router's gRPC port (Service and `specd router`)
# worker ports the router's EndpointSlice discovery dials when the configuration names none
DISCOVERY_TARGET_PORT = Range(1, 65535, default=50052)
DISCOVERY_DRAFT_PORT = Range(1, 65535, default=50053)
# Prometheus /metrics of the router and of every worker, each on a port of its own (the operator
# sets this one on every pod; the command lines serve none unless given --metrics-port).
METRICS_PORT = Range(1, 65535, default=9090)
# The router's OpenAI-compatible HTTP (/v1/completions, /v1/chat/completions, /v1/models).
HTTP_PORT = Range(1, 65535, default=8000)
# The SpecDecodingService a process serves, for the `service` label of its metrics (the operator
# sets it on every pod; a local stack is "local").
SERVICE_ENV = "SPECD_SERVICE"
# A router pod's own name and its router Service (the operator sets both): with them the router
# takes its share of the workers among the router replicas (specd.router.partition).
POD_NAME_ENV = "SPECD_POD_NAME"
ROUTER_SERVICE_ENV = "SPECD_ROUTER_SERVICE"


# --- speculation spellings ----------------------------------------------------------------------

def speculation_mode(value: Any) -> str:
    """The canonical speculation mode of `value`: an alias (`off`) or YAML's `false` read as "none"."""
    if value is False:
        return "none"
    if isinstance(value, str):
        mode = SPECULATION_MODE_ALIASES.get(value, value)
        if mode in SPECULATION_MODES:
            return mode
    aliases = ", ".join(f"{alias} = {mode}" for alias, mode in SPECULATION_MODE_ALIASES.items())
    raise ValueError(f"must be one of {', '.join(SPECULATION_MODES)} (alias {aliases}), got {value!r}")


def parse_speculation(text: Any) -> tuple[str, int | None]:
    """A command-line speculation: `goodput`, `none` (alias `off`) or `fixed:K` -> (mode, K or None).

    Raises ValueError with a message meant for the user.
    """
    mode, colon, k = str(text).partition(":") if isinstance(text, str) else (text, "", "")
    if mode == "fixed":
        if not (k.isdigit() and int(k) in K):
            raise ValueError(f"{text!r}: write fixed:K with K in {K.describe()}, e.g. fixed:4")
        return "fixed", int(k)
    if colon:
        raise ValueError(f"{text!r}: only fixed takes a k (fixed:K)")
    try:
        return speculation_mode(mode), None
    except ValueError:
        raise ValueError(f"{text!r}: use {', '.join(m for m in SPECULATION_MODES if m != 'fixed')}, fixed:K "
                         f"(e.g. fixed:4) or the alias {', '.join(SPECULATION_MODE_ALIASES)}") from None


def speculation_label(mode: str, k: int | None) -> str:
    """The command-line spelling of a configured mode: `fixed:K`, `goodput`, `none`."""
    return f"fixed:{k}" if mode == "fixed" else mode


# --- the router configuration file --------------------------------------------------------------

def _no_bool(kind: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1
            raise ValueError(f"must be {kind}, got {value!r}")
        return value
    return BeforeValidator(check)


def _int(r: Range[int]) -> Any:
    return Field(default=r.default, ge=r.minimum, le=r.maximum)


Int = Annotated[int, _no_bool("an integer")]
Float = Annotated[float, _no_bool("a number")]


class _Section(BaseModel):
    """Keys in camelCase (as in the SpecDecodingService); null means the default; unknown keys are
    ignored (an operator newer than the router image may render more)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class SpeculationConfig(_Section):
    """`speculation: {mode, k, maxK}`; also `mode: fixed:K`, and a bare mode (`speculation: none`)."""

    mode: SpeculationMode = DEFAULT_SPECULATION_MODE
    k: Int = _int(K)
    max_k: Int = _int(MAX_K_RANGE)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, (str, bool)):
            data = {"mode": data}
        if isinstance(data, dict) and isinstance(data.get("mode"), str) and data["mode"].startswith("fixed:"):
            try:
                mode, k = parse_speculation(data["mode"])
            except ValueError as exc:
                raise ValueError(f"mode {exc}") from None
            data = {**data, "mode": mode, "k": k}
        return data

    @field_validator("mode", mode="before")
    @classmethod
    def _canonical_mode(cls, value: Any) -> str:
        return speculation_mode(value)


class LapsSdConfig(_Section):
    """`lapsSd`: LAPS-SD's queues on attained service (also used by `las`)."""

    queues: Int = _int(QUEUES)
    first_quantum: Int = _int(FIRST_QUANTUM)
    quantum_growth: Float = Field(default=QUANTUM_GROWTH.default, ge=QUANTUM_GROWTH.minimum)
    stability_window: Int = _int(STABILITY_WINDOW)
    stability_threshold: Float = Field(default=STABILITY_THRESHOLD.default, ge=STABILITY_THRESHOLD.minimum)


class DiscoveryConfig(_Section):
    """`discovery`: the worker Services whose EndpointSlices the router watches."""

    namespace: str = ""
    target_service: str = ""
    draft_service: str = ""  # empty (null) without a draft pool
    target_port: Int = _int(DISCOVERY_TARGET_PORT)
    draft_port: Int = _int(DISCOVERY_DRAFT_PORT)


class RouterConfigFile(_Section):
    """The router configuration file, as `specd router --config` reads it."""

    policy: Policy = DEFAULT_POLICY
    speculation: SpeculationConfig = SpeculationConfig()
    max_batch_size: Int = _int(MAX_BATCH_SIZE)
    max_queued_requests: Int = _int(MAX_QUEUED_REQUESTS)
    pipeline_depth: Int = _int(PIPELINE_DEPTH)
    laps_sd: LapsSdConfig = LapsSdConfig()
    discovery: DiscoveryConfig | None = None


def parse_router_config(raw: Any, what: str = "router config") -> RouterConfigFile:
    """Validate a router configuration (the parsed YAML); SpecdError naming each bad field."""
    if not isinstance(raw, dict):
        raise SpecdError(f"{what} must be a mapping, got {type(raw).__name__}")
    try:
        return RouterConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecdError(f"{what}: " + "; ".join(_describe(e) for e in exc.errors())) from None


_TYPE_MESSAGES = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "string_type": "must be a string",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping", "dict_type": "must be a mapping",
}


def _describe(error: ErrorDetails) -> str:
    """`speculation.maxK must be ≤ 16, got 20` from one pydantic error (its loc uses the aliases)."""
    field = ".".join(str(part) for part in error["loc"])
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "less_than_equal":
        text = f"must be ≤ {ctx['le']}"
    elif kind == "greater_than_equal":
        text = f"must be ≥ {ctx['ge']}"
    elif kind == "literal_error":
        text = f"must be one of {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}"
    elif kind == "value_error":  # our validators' messages read on from the field's name
        text = str(ctx.get("error", error["msg"]))
    else:
        text = _TYPE_MESSAGES.get(kind) or f"is invalid ({error['msg']})"
    if ", got " not in text and "input" in error and not isinstance(error["input"], dict):
        text += f", got {error['input']!r}"
    return f"{field} {text}" if field else text


__all__ = [
    "Policy", "POLICIES", "DEFAULT_POLICY", "SpeculationMode", "SPECULATION_MODES", "SPECULATION_MODE_ALIASES",
    "DEFAULT_SPECULATION_MODE",
    "DRAFT_METHODS", "DEFAULT_DRAFT_METHOD", "DRAFT_POOL_METHODS", "TARGET_DRAFT_METHODS", "APPROXIMATE_METHODS",
    "IN_TARGET_METHODS", "DRAFTING_METHODS", "DEVICE_KINDS", "DEFAULT_DEVICE", "DTYPES", "DEFAULT_DTYPE", "Range",
    "MAX_K", "K", "MAX_K_RANGE", "MAX_BATCH_SIZE", "CLUSTER_MAX_BATCH_SIZE_DEFAULT", "MAX_QUEUED_REQUESTS",
    "PIPELINE_DEPTH", "QUEUES", "FIRST_QUANTUM", "QUANTUM_GROWTH", "STABILITY_WINDOW", "STABILITY_THRESHOLD",
    "TENSOR_PARALLEL_SIZES", "TENSOR_PARALLEL_SIZE", "TARGET_REPLICAS", "DRAFT_REPLICAS", "DRAFT_GPUS",
    "ROUTER_REPLICAS", "ROUTER_PORT", "DISCOVERY_TARGET_PORT", "DISCOVERY_DRAFT_PORT", "METRICS_PORT",
    "HTTP_PORT", "SERVICE_ENV", "POD_NAME_ENV", "ROUTER_SERVICE_ENV", "speculation_mode", "parse_speculation",
    "speculation_label", "SpeculationConfig",
    "LapsSdConfig", "DiscoveryConfig", "RouterConfigFile", "parse_router_config",
]
