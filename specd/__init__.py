"""specd: LLM serving with speculative decoding, Kubernetes-native.

Subpackages (each a top-level folder of the repository):
  specd.worker   model runtime, speculation, worker gRPC servers   (worker/)
  specd.router   cluster-level scheduler and public gRPC service    (router/)
  specd.client   client SDK                                          (client/)
  specd.operator Kopf operator                                      (operator/)
  specd.demo     training of the tiny demo models                    (specd/demo/)
  specd.devcluster  local Kubernetes control plane for tests        (specd/devcluster/)
"""

__version__ = "0.1.0"
