"""`specd operator` wiring, the package layout, and the Kopf registry."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import pytest

from specd.errors import SpecdError
from specd.operator import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="specd")
    subparsers = parser.add_subparsers()
    cli.register(subparsers, None)
    return parser.parse_args(list(argv))


def test_operator_command_parses_its_options() -> None:
    args = parse("operator", "-n", "a", "--namespace", "b", "--image", "x/specd:1",
                 "--resync-seconds", "5")
    assert args.namespaces == ["a", "b"]
    assert args.image == "x/specd:1" and args.resync_seconds == 5.0
    assert args.func.__module__ == "specd.operator.cli"


def test_stdlib_operator_is_not_shadowed_from_the_repo_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not out.strip().startswith(str(REPO))


def test_cli_module_imports_nothing_heavy() -> None:
    code = ("import sys, specd.operator.cli; "
            "print(sorted(m for m in ('kopf', 'kubernetes', 'lightkube') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_bad_kubeconfig_is_a_user_error(tmp_path: pathlib.Path) -> None:
    args = parse("operator", "--kubeconfig", str(tmp_path / "nope"))
    with pytest.raises(SpecdError, match="cannot load Kubernetes credentials"):
        args.func(args)


def test_resync_interval_must_be_positive() -> None:
    args = parse("operator", "--resync-seconds", "0")
    with pytest.raises(SpecdError, match="--resync-seconds"):
        args.func(args)


def test_registry_has_handlers_for_the_resource_and_every_child_kind() -> None:
    pytest.importorskip("kopf")
    from specd.kube import Kube
    from specd.operator import builders, handlers

    registry = handlers.build_registry(Kube(client=None))  # type: ignore[arg-type]
    watched = {h.id for h in registry._watching.get_all_handlers()}
    assert watched == {f"child-{kind}" for kind in builders.CHILD_KINDS}
    changing = {h.id for h in registry._changing.get_all_handlers()}
    assert changing == {"create", "update", "resume"}
    # no timers or daemons: Kopf would put a finalizer on every resource for them
    assert not registry._spawning.get_all_handlers()
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert {"start-periodic", "stop-periodic"} <= activities


def test_the_command_line_builds_without_torch() -> None:
    """The operator's image has no torch, numpy or grpc health service (docker/operator.Dockerfile),
    and its entry point builds the whole `specd` parser: no command module may import them when it
    is registered (the simulator's engine does, through the router's replicas)."""
    code = ("import sys; sys.modules.update(dict.fromkeys(['torch', 'numpy', 'grpc_health'], None))\n"
            "from specd.cli import build_parser\n"
            "build_parser().parse_args(['operator', '--help'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: specd operator" in result.stdout, result.stderr[-2000:]
