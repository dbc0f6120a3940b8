"""Fixtures for tests against a real Kubernetes control plane (specd.devcluster).

`dev_cluster` (session scope) starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (two fake GPU nodes) once per test session and stops them at its end.

The binaries are built (or found in the cache) right after collection, and only when a collected
test uses `dev_cluster`: a cold build takes many minutes and must not count against a test's
timeout. Where they cannot be built (no Go toolchain, no module proxy) the tests skip with the
reason; with SPECD_REQUIRE_DEV_CLUSTER=1 (CI) they fail instead, so CI cannot silently skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/k8s/k8s_support.py

import pytest
from k8s_support import CHECKPOINTS, NS, OPERATOR_NS, RELEASE, REPO, diagnose, wait_for  # noqa: E402

from specd.devcluster import binaries
from specd.devcluster.cluster import DevCluster, start
from specd.devcluster.images import TAG
from specd.devcluster.realnode import RealNodeUnavailable

# Outcome of the build step: {"bin_dir": Path} or {"unavailable": reason}.
_BINARIES: dict[str, object] = {}


def _uses_dev_cluster(session: pytest.Session) -> bool:
    return any({"dev_cluster", "real_node_cluster"} & set(getattr(item, "fixturenames", ()))
               for item in session.items)


def _prepare_binaries(config: pytest.Config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    try:
        # Show build progress on the terminal even while pytest captures output.
        with capture.global_and_fixture_disabled():
            _BINARIES["bin_dir"] = binaries.ensure(build=True)
    except binaries.BinariesUnavailable as exc:
        _BINARIES["unavailable"] = str(exc)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _uses_dev_cluster(session) and not _BINARIES:
        _prepare_binaries(session.config)


def _unavailable(reason: str) -> None:
    if os.environ.get("SPECD_REQUIRE_DEV_CLUSTER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _bin_dir(request: pytest.FixtureRequest) -> Path:
    if not _BINARIES:  # e.g. collected through a plugin that skipped the hook above
        _prepare_binaries(request.config)
    if "unavailable" in _BINARIES:
        _unavailable(f"dev cluster unavailable: {_BINARIES['unavailable']}")
    bin_dir = _BINARIES["bin_dir"]
    assert isinstance(bin_dir, Path)
    return bin_dir


def _log(message: str) -> None:
    print(f"dev-cluster: {message}", file=sys.stderr)


@pytest.fixture(scope="session")
def dev_cluster(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = start(tmp_path_factory.mktemp("dev-cluster"), _bin_dir(request), log=_log,
                    die_with_parent=True)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def real_node_cluster(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A second dev cluster with one real node (containerd, kubelet, kube-proxy) holding the
    images of `make images`; its kwok nodes are tainted, so workloads land on the real node.
    The image build (minutes when its cache is cold) happens here, before any test's timeout."""
    bin_dir = _bin_dir(request)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # show image build progress
            cluster = start(tmp_path_factory.mktemp("real-node-cluster"), bin_dir, log=_log,
                            die_with_parent=True, real_node=True)
    except RealNodeUnavailable as exc:
        _unavailable(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def real_node_chart(real_node_cluster: DevCluster,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """The chart installed with helm from the local images, and the demo models in a PVC of the
    namespace NS, once per session: the real-node test modules share them (a helm install and the
    operator's start cost about a minute on the 2-core node)."""
    cluster = real_node_cluster
    helm = [str(cluster.helm), "--kubeconfig", str(cluster.kubeconfig)]
    installed = subprocess.run(helm + [
        "install", RELEASE, str(REPO / "helm" / "specd"), "--namespace", OPERATOR_NS,
        "--create-namespace", "--wait", "--timeout", "180s",
        "--set", f"image.repository=localhost/specd-operator,image.tag={TAG},image.pullPolicy=Never",
        "--set", f"workerImage.repository=localhost/specd,workerImage.tag={TAG}",
        "--set", "statsSeconds=2,resyncSeconds=15"], capture_output=True, text=True, env=cluster.env)
    assert installed.returncode == 0, installed.stderr + diagnose(cluster)
    # The models as a user provides them: a volume holding demo/target and demo/draft, claimed
    # as specd-models. Here a hostPath PersistentVolume on the real node, readable by the
    # workers' uid.
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(CHECKPOINTS, models / "demo")
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    models.parent.chmod(0o755)
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-specd-models"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "storageClassName": "", "hostPath": {"path": str(models), "type": "Directory"},
                  "claimRef": {"namespace": NS, "name": "specd-models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "specd-models", "namespace": NS},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "volumeName": f"{NS}-specd-models", "resources": {"requests": {"storage": "1Gi"}}}},
    ]}))
    wait_for("the namespace's default ServiceAccount", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0)
    yield cluster
    subprocess.run(helm + ["uninstall", RELEASE, "--namespace", OPERATOR_NS], capture_output=True,
                   env=cluster.env)
