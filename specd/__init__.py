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

__version__ = "0.1.0"

# The component folders sit at the top of the repository; `specd/worker`, `specd/router`,
# `specd/client`, `specd/operator` and `specd/proto` are committed relative symlinks to them, so
# the import system, the wheel build and static tools (mypy, editors) all see one `specd.*` tree.
# operator/ deliberately has no __init__.py: it is a namespace portion reached only as
# specd.operator, so `python -m ...` or `import operator` run from the repository root still load
# Python's own `operator` module.
