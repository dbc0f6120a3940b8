"""Model URIs -> what a pod needs to read the checkpoint.

Two forms (the CRD's pattern refuses anything else):
  pvc://<claim>/<path>  the claim is mounted read-only at /models; the worker gets /models/<path>
  /<absolute path>      passed to the worker as is: baked into the image, or a node path the
                        cluster administrator mounts by other means
"""

from __future__ import annotations

import dataclasses
from typing import Any

from specd.errors import SpecdError
from specd.operator.names import MODELS_DIR

PVC_SCHEME = "pvc://"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    path: str  # what the worker receives as --model
    claim: str | None = None  # PersistentVolumeClaim to mount read-only at MODELS_DIR

    def volumes(self) -> list[dict[str, Any]]:
        if self.claim is None:
            return []
        return [{"name": "models",
                 "persistentVolumeClaim": {"claimName": self.claim, "readOnly": True}}]

    def mounts(self) -> list[dict[str, Any]]:
        if self.claim is None:
            return []
        return [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}]


def parse_model_uri(uri: str) -> ModelSource:
    if uri.startswith(PVC_SCHEME):
        claim, _, path = uri[len(PVC_SCHEME):].partition("/")
        if not claim or not path.strip("/"):
            raise SpecdError(f"model uri {uri!r}: expected pvc://<claim>/<path>")
        return ModelSource(path=f"{MODELS_DIR}/{path.strip('/')}", claim=claim)
    if uri.startswith("/"):
        return ModelSource(path=uri)
    raise SpecdError(f"model uri {uri!r}: expected pvc://<claim>/<path> or an absolute path")
