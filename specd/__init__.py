"""specd: LLM serving with speculative decoding, Kubernetes-native.

Subpackages (each a top-level folder of the repository):
  specd.worker   model runtime, speculation, worker gRPC servers   (worker/)
  specd.router   cluster-level scheduler and public gRPC service    (router/)
  specd.client   client SDK                                          (client/)
  specd.operator Kopf operator                                      (operator/)
  specd.proto    the .proto contract and its generated stubs        (proto/)
  specd.demo     training of the tiny demo models                    (specd/demo/)
  specd.devcluster  local Kubernetes control plane for tests        (specd/devcluster/)
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the component folders sit beside this package; they become its
# subpackages through __path__. (An installed wheel gets the same layout from pyproject's
# package-dir mapping.) operator/ deliberately has no __init__.py: it is a namespace portion
# reached only as specd.operator, so `python -m ...` or `import operator` run from the
# repository root still load Python's own `operator` module.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "worker" / "__init__.py").is_file():
    __path__.append(str(_checkout))
