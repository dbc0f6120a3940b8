"""Names, labels and ports of the children of a SpecDecodingService."""

from __future__ import annotations

FIELD_MANAGER = "specd-operator"
MANAGED_BY = "specd-operator"

TARGET, DRAFT, ROUTER = "target", "draft", "router"
ROLES = (TARGET, DRAFT, ROUTER)

TARGET_PORT = 50061
DRAFT_PORT = 50062
ROUTER_PORT = 50051
# where the operator reaches a resource's router (live figures): in a cluster, the router
# Service's ClusterIP, read from the Service itself (no dependency on cluster DNS)
ROUTER_ADDRESS_TEMPLATE = "{cluster_ip}:{port}"
ROUTER_CONFIG_KEY = "router.yaml"
ROUTER_CONFIG_DIR = "/etc/specd"
MODELS_DIR = "/models"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
CONFIG_HASH_ANNOTATION = "specd.io/config-hash"


def child_name(owner: str, role: str) -> str:
    """`<owner>-<role>`: Deployment, Service and PodDisruptionBudget of one role."""
    return f"{owner}-{role}"


def router_config_name(owner: str) -> str:
    return f"{owner}-router-config"


def router_account_name(owner: str) -> str:
    """ServiceAccount, Role and RoleBinding of the router's endpoint discovery."""
    return f"{owner}-router"


def instance_labels(owner: str) -> dict[str, str]:
    """Labels on every child of `owner` (used to find them again for pruning)."""
    return {LABEL_NAME: "specd", LABEL_INSTANCE: owner, LABEL_MANAGED_BY: MANAGED_BY}


def selector_labels(owner: str, role: str) -> dict[str, str]:
    """The immutable pod selector of one role's Deployment, Service and PDB."""
    return {LABEL_NAME: "specd", LABEL_INSTANCE: owner, LABEL_COMPONENT: role}


def role_labels(owner: str, role: str) -> dict[str, str]:
    return {**instance_labels(owner), LABEL_COMPONENT: role}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
