"""The SpecDecodingService CustomResourceDefinition: the one source of truth for the schema.

`manifests/crd.yaml` and `helm/specd/crds/specdecodingservices.specd.io.yaml` are generated from
this module (`python -m specd.operator.crd --write`); a unit test checks they are up to date.
`apply_defaults` mirrors the API server's structural defaulting so builders and tests read a
fully defaulted spec without repeating the default values anywhere else. The enums, bounds and
defaults come from `specd.contract`, which the router and the workers check against too: the
schema admits exactly what they run.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
from typing import Any

from specd import contract as c

GROUP = "specd.io"
VERSION = "v1alpha1"
KIND = "SpecDecodingService"
PLURAL = "specdecodingservices"
SINGULAR = "specdecodingservice"
SHORT_NAMES = ["sds"]
CRD_NAME = f"{PLURAL}.{GROUP}"

DRAFT_METHODS = list(c.DRAFT_METHODS)
DTYPE_DESCRIPTION = ("Weights and activations: auto is bfloat16 on a GPU and float32 without one; "
                     "float16 for GPUs without bfloat16 (before Ampere).")
POLICIES = list(c.POLICIES)
SPECULATION_MODES = list(c.SPECULATION_MODES)  # canonical spellings only (no aliases, no booleans)
TENSOR_PARALLEL_SIZES = list(c.TENSOR_PARALLEL_SIZES)
SERVICE_TYPES = ["ClusterIP", "NodePort", "LoadBalancer"]
# pvc://<claim>/<path inside the claim>, or an absolute path already present in the container.
# A resource.Quantity (the pattern Kubernetes' own CRDs use for int-or-string quantities).
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
                    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
MODEL_URI_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]+|/[^\s]*)$"


def _int(bounds: c.Range[int], description: str, default: int | None = None) -> dict[str, Any]:
    """An integer with the contract's bounds and default (`default` overrides the contract's)."""
    schema: dict[str, Any] = {"type": "integer", "description": description}
    default = bounds.default if default is None else default
    if default is not None:
        schema["default"] = default
    schema["minimum"] = bounds.minimum
    if bounds.maximum is not None:
        schema["maximum"] = bounds.maximum
    return schema


def _number(bounds: c.Range[float], description: str) -> dict[str, Any]:
    """A number with the contract's bounds and default."""
    schema: dict[str, Any] = {"type": "number", "description": description,
                              "default": bounds.default, "minimum": bounds.minimum}
    if bounds.maximum is not None:
        schema["maximum"] = bounds.maximum
    return schema


def _enum(values: list[str], default: str, description: str) -> dict[str, Any]:
    return {"type": "string", "enum": values, "default": default, "description": description}


def _quantity_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        },
    }


def _resources(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "requests": _quantity_map("Minimum compute resources (cpu, memory, ...)."),
            "limits": _quantity_map("Maximum compute resources."),
        },
    }


def _model(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["uri"],
        "properties": {
            "uri": {
                "type": "string",
                "pattern": MODEL_URI_PATTERN,
                "maxLength": 1024,
                "description": "HF-format checkpoint: pvc://<claim>/<path> (the claim is mounted "
                "read-only at /models) or an absolute path already present in the container.",
            },
        },
    }


def _placement() -> dict[str, Any]:
    return {
        "nodeSelector": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Node labels the pods must match (for example a GPU type).",
        },
        "tolerations": {
            "type": "array",
            "description": "Tolerations of the pods (core/v1 Toleration objects).",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }


def _autoscaled_pool(role: str, minimum: c.Range[int], maximum: c.Range[int],
                     aims: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "default": {},
        "description": f"Bounds and aims of the {role} pool while autoscaling is on.",
        "properties": {
            "minReplicas": _int(minimum, f"Fewest {role} pods."),
            "maxReplicas": _int(maximum, f"Most {role} pods."),
            **aims,
        },
        "x-kubernetes-validations": [{
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": f"autoscaling.{role}.minReplicas must be less than or equal to "
                       f"autoscaling.{role}.maxReplicas",
            "fieldPath": ".minReplicas",
        }],
    }


def _autoscaling_schema() -> dict[str, Any]:
    """`spec.autoscaling`: off unless enabled; while on, the operator owns both pools' replicas
    (spec.target.replicas and spec.draft.replicas are then only its starting point)."""
    return {
        "type": "object",
        "default": {},
        "description": "Speculation-aware autoscaling of the target and draft pools from the "
                       "router's live figures. While enabled the operator sets both pools' "
                       "replicas (status.autoscaling) and ignores spec.target.replicas (the scale "
                       "subresource) and spec.draft.replicas.",
        "properties": {
            "enabled": {"type": "boolean", "default": False,
                        "description": "Autoscale (off by default)."},
            "scaleUpWindowSeconds": _int(c.AUTOSCALE_SCALE_UP_WINDOW_SECONDS,
                                         "A pool grows to the lowest recommendation of this "
                                         "window (sustained demand only)."),
            "scaleDownWindowSeconds": _int(c.AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS,
                                           "A pool shrinks to the highest recommendation of this "
                                           "window (no flapping on a steady load)."),
            "target": _autoscaled_pool("target", c.AUTOSCALE_TARGET_MIN_REPLICAS,
                                       c.AUTOSCALE_TARGET_MAX_REPLICAS, {
                "queuePerReplica": _number(c.AUTOSCALE_QUEUE_PER_TARGET,
                                           "Requests in the router (queued and running) per "
                                           "target replica the pool aims for."),
                "ttftSeconds": _number(c.AUTOSCALE_TTFT_SECONDS,
                                       "Mean time to first token above which the pool grows; "
                                       "0: no TTFT objective."),
            }),
            "draft": _autoscaled_pool("draft", c.AUTOSCALE_DRAFT_MIN_REPLICAS,
                                      c.AUTOSCALE_DRAFT_MAX_REPLICAS, {
                "utilisation": _number(c.AUTOSCALE_DRAFT_UTILISATION,
                                       "Share of its time a draft replica spends drafting that "
                                       "the pool aims for (draft.method model only)."),
            }),
        },
    }


def _spec_schema() -> dict[str, Any]:
    target = {
        "type": "object",
        "description": "The pool of target (verifier) workers.",
        "required": ["model"],
        "properties": {
            "model": _model("The target model."),
            "tensorParallelSize": {
                **_int(c.TENSOR_PARALLEL_SIZE, "GPUs per target pod; the tensor-parallel processes "
                                               "of one replica run in one pod."),
                "x-kubernetes-validations": [{
                    "rule": f"self in {TENSOR_PARALLEL_SIZES}",
                    "message": "tensorParallelSize must be a power of two (1, 2, 4, ..., "
                               f"{TENSOR_PARALLEL_SIZES[-1]})",
                }],
            },
            "replicas": _int(c.TARGET_REPLICAS, "Number of target pods (the scale subresource)."),
            "dtype": _enum(list(c.DTYPES), c.DEFAULT_DTYPE, DTYPE_DESCRIPTION),
            "resources": _resources("Resources of a target pod; nvidia.com/gpu is set to "
                                    "tensorParallelSize by the operator."),
            **_placement(),
        },
    }
    # No CEL rule on this node: the API server checks an object's default against the rules of
    # its node, and the default ({method: model}, without a model) must pass. The rule that
    # method 'model' needs a model sits on the spec.
    draft = {
        "type": "object",
        "description": "How drafts are proposed.",
        "default": {},
        "properties": {
            "method": _enum(DRAFT_METHODS, c.DEFAULT_DRAFT_METHOD,
                            "model: a separate pool of draft workers; early-exit (Kangaroo), "
                            "hierarchical (HiSpec): the target's own trained early exits; ngram: "
                            "prompt lookup. These three draft inside the target workers (no draft "
                            "pool), need an early-exit-capable target for the first two, and are "
                            "exact. specee (SpecEE): APPROXIMATE, greedy tokens exit early inside "
                            "the target and may differ from the target's own; needs speculation "
                            "mode none. none: plain decoding."),
            "model": _model("The draft model (required when method is 'model')."),
            "replicas": _int(c.DRAFT_REPLICAS, "Number of draft pods (method 'model' only)."),
            "gpus": _int(c.DRAFT_GPUS, "GPUs per draft pod (method 'model' only)."),
            "dtype": _enum(list(c.DTYPES), c.DEFAULT_DTYPE, DTYPE_DESCRIPTION),
            "resources": _resources("Resources of a draft pod."),
            **_placement(),
        },
    }
    speculation = {
        "type": "object",
        "default": {},
        "description": "Speculation length control.",
        "properties": {
            "mode": _enum(SPECULATION_MODES, c.DEFAULT_SPECULATION_MODE,
                          "goodput: k chosen per batch to maximise goodput; fixed: always k; "
                          "none: no speculation."),
            "k": _int(c.K, "Speculation length (the starting point in goodput mode)."),
            "maxK": _int(c.MAX_K_RANGE, "Upper bound of k."),
        },
        "x-kubernetes-validations": [
            {"rule": "self.k <= self.maxK", "message": "k must be less than or equal to maxK",
             "fieldPath": ".k"},
            {"rule": "self.mode != 'fixed' || self.k >= 1",
             "message": "k must be at least 1 when mode is 'fixed'", "fieldPath": ".k"},
        ],
    }
    scheduling = {
        "type": "object",
        "default": {},
        "description": "Router scheduling.",
        "properties": {
            "policy": _enum(POLICIES, c.DEFAULT_POLICY, "Request scheduling policy of the router."),
            "maxBatchSize": _int(c.MAX_BATCH_SIZE, "Most requests in one iteration batch.",
                                 default=c.CLUSTER_MAX_BATCH_SIZE_DEFAULT),
            "speculation": speculation,
        },
    }
    router = {
        "type": "object",
        "default": {},
        "description": "The router (public gRPC endpoint and scheduler).",
        "properties": {
            "replicas": _int(c.ROUTER_REPLICAS, "Number of router pods."),
            "resources": _resources("Resources of a router pod."),
            "service": {
                "type": "object",
                "default": {},
                "properties": {
                    "type": _enum(SERVICE_TYPES, "ClusterIP", "Type of the router Service."),
                    "port": _int(c.ROUTER_PORT, "gRPC port of the router Service."),
                    "httpPort": _int(c.HTTP_PORT, "OpenAI-compatible HTTP port of the router Service "
                                                  "(/v1/completions, /v1/chat/completions, /v1/models)."),
                },
            },
        },
    }
    return {
        "type": "object",
        "required": ["target"],
        "properties": {
            "image": {"type": "string", "maxLength": 512,
                      "description": "Worker/router image; the operator's default when unset."},
            "target": target,
            "draft": draft,
            "scheduling": scheduling,
            "router": router,
            "autoscaling": _autoscaling_schema(),
        },
        # draft and scheduling are always there: both default to objects.
        "x-kubernetes-validations": [{
            "rule": "self.draft.method != 'model' || has(self.draft.model)",
            "message": "draft.model is required when draft.method is 'model' (the default); use "
                       "draft.method: none for plain decoding",
            "fieldPath": ".draft.model",
            "reason": "FieldValueRequired",
        }, {
            "rule": "self.draft.method != 'none' || self.scheduling.speculation.mode == 'none'",
            "message": "scheduling.speculation.mode must be 'none' when draft.method is 'none'",
            "fieldPath": ".scheduling.speculation.mode",
        }, {
            "rule": "self.draft.method != 'specee' || self.scheduling.speculation.mode == 'none'",
            "message": "draft.method specee exits early inside the target, one token per step (no "
                       "speculation): scheduling.speculation.mode must be 'none'",
            "fieldPath": ".scheduling.speculation.mode",
        }],
    }


def _complete_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Spell out the nested defaults inside object defaults (`default: {}`).

    The API server checks each default against the CEL rules of its node as written, before
    nested defaulting: `{}` would fail `self.k <= self.maxK` with "no such key".
    """
    for sub in schema.get("properties", {}).values():
        _complete_defaults(sub)
    if schema.get("type") == "object" and isinstance(schema.get("default"), dict):
        schema["default"] = _default(copy.deepcopy(schema["default"]), schema)
    return schema


def _status_schema() -> dict[str, Any]:
    role: dict[str, Any] = {
        "type": "object",
        "properties": {
            "replicas": {"type": "integer"},
            "readyReplicas": {"type": "integer"},
            "updatedReplicas": {"type": "integer"},
            # the Deployment's spec.replicas: spec's, or the autoscaler's while it is on
            "desiredReplicas": {"type": "integer"},
        },
    }
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer"},
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "target": {**role, "properties": {**role["properties"],
                                              "selector": {"type": "string"}}},
            "draft": role,
            "router": role,
            "endpoint": {"type": "string"},
            "acceptanceRate": {"type": "number"},
            "goodput": {"type": "number"},
            "currentK": {"type": "integer"},
            # the autoscaler's latest decision (operator/scaling.py; absent while it is off)
            "autoscaling": {
                "type": "object",
                "properties": {
                    "targetReplicas": {"type": "integer"},
                    "draftReplicas": {"type": "integer"},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "lastScaleTime": {"type": "string", "format": "date-time"},
                },
            },
        },
    }


PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    # Replicas from the status: the spec's are not the truth while autoscaling is on.
    {"name": "Target", "type": "integer", "jsonPath": ".status.target.desiredReplicas",
     "description": "Target replicas asked for (spec's, or the autoscaler's)"},
    {"name": "Available", "type": "integer", "jsonPath": ".status.target.readyReplicas",
     "description": "Ready target replicas"},
    {"name": "TP", "type": "integer", "jsonPath": ".spec.target.tensorParallelSize",
     "priority": 1},
    {"name": "Draft", "type": "integer", "jsonPath": ".status.draft.desiredReplicas",
     "description": "Draft replicas asked for (spec's, or the autoscaler's)"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.draft.method",
     "description": "Draft method"},
    {"name": "K", "type": "integer", "jsonPath": ".status.currentK", "priority": 1},
    {"name": "Acceptance", "type": "number", "jsonPath": ".status.acceptanceRate"},
    {"name": "Scaling", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Autoscaling")].reason',
     "description": "Disabled, or the autoscaler's latest reason"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": SHORT_NAMES, "categories": ["specd"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "An LLM served with speculative decoding: target, draft and "
                                   "router pools.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": _complete_defaults(_spec_schema()),
                        "status": _status_schema(),
                    },
                    # Children are named <name>-<role>, <name>-router-config: Service names
                    # must be DNS-1035 labels of at most 63 characters.
                    "x-kubernetes-validations": [{
                        "rule": "self.metadata.name.size() <= 40 && "
                                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                        "message": "metadata.name must be a DNS-1035 label of at most 40 "
                                   "characters (lower case letters, digits, '-'; starting "
                                   "with a letter)",
                    }],
                }},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.target.replicas",
                        "statusReplicasPath": ".status.target.replicas",
                        "labelSelectorPath": ".status.target.selector",
                    },
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def apply_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with the schema's defaults filled in, as the API server would."""
    return _default(copy.deepcopy(spec), _spec_schema())


def _default(value: Any, schema: dict[str, Any]) -> Any:
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = _default(value[key], sub)
    return value


def render() -> str:
    """The CRD as a YAML document, with a header naming its source."""
    import yaml

    header = ("# Generated by `python -m specd.operator.crd --write` from operator/crd.py; "
              "do not edit.\n")
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


REPO = pathlib.Path(__file__).resolve().parent.parent
OUTPUTS = [REPO / "manifests" / "crd.yaml",
           REPO / "helm" / "specd" / "crds" / f"{CRD_NAME}.yaml"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the generated files")
    args = parser.parse_args(argv)
    text = render()
    if not args.write:
        sys.stdout.write(text)
        return 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
