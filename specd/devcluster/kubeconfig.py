"""Kubeconfig files for the dev cluster (credentials embedded, so each file stands alone)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from specd.devcluster.pki import KeyPair

CONTEXT = "specd-dev"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write(path: Path, server: str, ca_cert: Path, client: KeyPair, user: str) -> Path:
    """Write a kubeconfig for `server` authenticating with `client`; returns `path`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(client.cert),
            "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
