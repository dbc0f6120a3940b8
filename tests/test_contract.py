"""One contract from the CRD to the worker (specd.contract).

(a) The CRD schema's enums, bounds and defaults are the contract's.
(b) Walk the contract: every value the schema admits at its bounds, rendered the way the operator
    renders it, runs: real `specd worker` processes (each --draft-method) and one real
    `specd router --config` per combination set become SERVING and generate.
(c) The router configuration's errors name the field; `off` and YAML's false mean `none`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from specd import contract as c
from specd.errors import SpecdError
from specd.operator import builders, crd
from specd.router.config import config_from_dict

# --- (a) the schema is the contract ---------------------------------------------------------------

SPEC = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

# every integer of the spec and the contract's range it must carry (default: the range's own)
INTEGERS = {
    "target.tensorParallelSize": (c.TENSOR_PARALLEL_SIZE, None),
    "target.replicas": (c.TARGET_REPLICAS, None),
    "draft.replicas": (c.DRAFT_REPLICAS, None),
    "draft.gpus": (c.DRAFT_GPUS, None),
    "scheduling.maxBatchSize": (c.MAX_BATCH_SIZE, c.CLUSTER_MAX_BATCH_SIZE_DEFAULT),
    "scheduling.speculation.k": (c.K, None),
    "scheduling.speculation.maxK": (c.MAX_K_RANGE, None),
    "router.replicas": (c.ROUTER_REPLICAS, None),
    "router.service.port": (c.ROUTER_PORT, None),
    "router.service.httpPort": (c.HTTP_PORT, None),
    "autoscaling.scaleUpWindowSeconds": (c.AUTOSCALE_SCALE_UP_WINDOW_SECONDS, None),
    "autoscaling.scaleDownWindowSeconds": (c.AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS, None),
    "autoscaling.target.minReplicas": (c.AUTOSCALE_TARGET_MIN_REPLICAS, None),
    "autoscaling.target.maxReplicas": (c.AUTOSCALE_TARGET_MAX_REPLICAS, None),
    "autoscaling.draft.minReplicas": (c.AUTOSCALE_DRAFT_MIN_REPLICAS, None),
    "autoscaling.draft.maxReplicas": (c.AUTOSCALE_DRAFT_MAX_REPLICAS, None),
}
# every non-integer number of the spec, the same way
NUMBERS = {
    "autoscaling.target.queuePerReplica": c.AUTOSCALE_QUEUE_PER_TARGET,
    "autoscaling.target.ttftSeconds": c.AUTOSCALE_TTFT_SECONDS,
    "autoscaling.draft.utilisation": c.AUTOSCALE_DRAFT_UTILISATION,
}
ENUMS = {
    "draft.method": (c.DRAFT_METHODS, c.DEFAULT_DRAFT_METHOD),
    "scheduling.policy": (c.POLICIES, c.DEFAULT_POLICY),
    "scheduling.speculation.mode": (c.SPECULATION_MODES, c.DEFAULT_SPECULATION_MODE),
    "router.service.type": (tuple(crd.SERVICE_TYPES), "ClusterIP"),  # Kubernetes', not specd's
    "target.dtype": (c.DTYPES, c.DEFAULT_DTYPE),
    "draft.dtype": (c.DTYPES, c.DEFAULT_DTYPE),
}


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}" if path else key)


def _node(path: str) -> dict:
    node = SPEC
    for key in path.split("."):
        node = node["properties"][key]
    return node


def test_every_integer_and_enum_of_the_schema_comes_from_the_contract() -> None:
    integers = {p for p, n in _walk(SPEC) if n.get("type") == "integer"}
    enums = {p for p, n in _walk(SPEC) if "enum" in n}
    assert integers == set(INTEGERS), "declare the new field's bounds in specd/contract.py"
    assert enums == set(ENUMS), "declare the new enum in specd/contract.py"
    numbers = {p for p, n in _walk(SPEC) if n.get("type") == "number"}
    assert numbers == set(NUMBERS), "declare the new field's bounds in specd/contract.py"
    for path, bounds in NUMBERS.items():
        node = _node(path)
        assert (node["minimum"], node.get("maximum"), node.get("default")) == (
            bounds.minimum, bounds.maximum, bounds.default), path
    for path, (bounds, default) in INTEGERS.items():
        node = _node(path)
        expected = bounds.default if default is None else default
        assert (node["minimum"], node.get("maximum"), node.get("default")) == (
            bounds.minimum, bounds.maximum, expected), path
    for path, (values, default) in ENUMS.items():
        node = _node(path)
        assert (node["enum"], node["default"]) == (list(values), default), path


def test_engine_limits_and_rules_match() -> None:
    from specd.worker.engine import MAX_K

    assert MAX_K == c.MAX_K == _node("scheduling.speculation.maxK")["maximum"] == _node(
        "scheduling.speculation.k")["maximum"]
    [tp_rule] = _node("target.tensorParallelSize")["x-kubernetes-validations"]
    assert tp_rule["rule"] == f"self in {list(c.TENSOR_PARALLEL_SIZES)}"
    assert max(c.TENSOR_PARALLEL_SIZES) == c.TENSOR_PARALLEL_SIZE.maximum
    rules = {r["rule"]: r["message"] for r in SPEC["x-kubernetes-validations"]}
    assert "(the default)" in rules["self.draft.method != 'model' || has(self.draft.model)"]
    assert "'none'" in rules["self.draft.method != 'none' || self.scheduling.speculation.mode == 'none'"]
    # the API server checks an object's default against the rules of its node: the draft
    # default (method model, no model) must not meet the rule that asks for a model there
    assert "x-kubernetes-validations" not in _node("draft")
    assert _node("draft")["default"]["method"] == c.DEFAULT_DRAFT_METHOD


def test_router_config_defaults_are_the_schemas() -> None:
    """A resource's defaulted scheduling block parses to the contract's router defaults."""
    config = config_from_dict(crd.apply_defaults({"target": {"model": {"uri": "/m"}}})["scheduling"])
    assert (config.policy, config.speculation, config.k, config.max_k) == (
        c.DEFAULT_POLICY, c.DEFAULT_SPECULATION_MODE, c.K.default, c.MAX_K_RANGE.default)
    assert config.max_batch_size == c.CLUSTER_MAX_BATCH_SIZE_DEFAULT


def test_command_lines_take_the_contracts_choices() -> None:
    from specd.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    choices = {a.dest: a for a in sub["worker"]._actions}  # noqa: SLF001
    assert tuple(choices["draft_method"].choices) == c.DRAFT_METHODS
    assert choices["draft_method"].default == c.DEFAULT_DRAFT_METHOD
    for command in ("router", "up"):
        actions = {a.dest: a for a in sub[command]._actions}  # noqa: SLF001
        assert tuple(actions["policy"].choices) == c.POLICIES
    up = parser.parse_args(["up"])
    assert (up.policy, up.speculation, up.max_batch_size) == (
        c.DEFAULT_POLICY, c.DEFAULT_SPECULATION_MODE, c.MAX_BATCH_SIZE.default)
    assert parser.parse_args(["up", "--speculation", "off"]).speculation == "none"
    assert parser.parse_args(["up", "--speculation", f"fixed:{c.MAX_K}"]).speculation == f"fixed:{c.MAX_K}"
    for bad in (["--speculation", f"fixed:{c.MAX_K + 1}"], ["--speculation", "sometimes"],
                ["--max-batch-size", str(c.MAX_BATCH_SIZE.maximum + 1)], ["--max-batch-size", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["router", *bad])


def test_a_draft_worker_needs_the_model_method() -> None:
    import argparse

    from specd.worker.cli import _worker

    with pytest.raises(SpecdError, match="--draft-method none is for target workers"):
        _worker(argparse.Namespace(role="draft", draft_method="none", threads=1))


def test_workers_refuse_k_beyond_the_engine_limit() -> None:
    from specd.demo.paths import demo_model_dirs
    from specd.proto.v1 import worker_pb2
    from specd.worker.servers.service import load_core

    target_dir, draft_dir = demo_model_dirs()
    delta = worker_pb2.CommittedDelta(request_id="r", start=0, tokens=[1, 2, 3])
    draft = load_core("draft", str(draft_dir))
    with pytest.raises(SpecdError, match=f"k must be in \\[0, {c.MAX_K}\\], got {c.MAX_K + 1}"):
        draft.propose([worker_pb2.ProposeItem(delta=delta, k=c.MAX_K + 1)])
    target = load_core("target", str(target_dir))
    with pytest.raises(SpecdError, match="k must be in"):
        target.verify([worker_pb2.VerifyItem(delta=delta, draft_tokens=[1] * (c.MAX_K + 1))])
    assert not draft.mirrors and not target.mirrors  # refused before any state changed


# --- (b) walk the contract: what the schema admits runs ---------------------------------------------

def _bounds(path: str) -> tuple[int, int]:
    node = _node(path)
    return node["minimum"], node["maximum"]


def _combinations() -> list[tuple[str, dict]]:
    """(name, spec) sets that together take every enum value and both bounds of k, maxK and
    maxBatchSize from the schema, each within the schema's CEL rules (k ≤ maxK, k ≥ 1 when fixed,
    mode none when draft.method is none): the defaults, every mode at the upper bounds, fixed at
    the lower ones, and every other draft method (plain decoding) at the lower ones."""
    policies = _node("scheduling.policy")["enum"]
    methods = _node("draft.method")["enum"]
    modes = _node("scheduling.speculation.mode")["enum"]
    k_low, k_high = _bounds("scheduling.speculation.k")
    max_k_low, max_k_high = _bounds("scheduling.speculation.maxK")
    batch_low, batch_high = _bounds("scheduling.maxBatchSize")
    variants = ([(mode, True, "model") for mode in modes] + [("fixed", False, "model")]
                + [("none", False, method) for method in methods if method != "model"])
    sets = [("defaults", {})]
    for i, (mode, high, method) in enumerate(variants):
        if high:
            speculation = {"mode": mode, "k": k_high, "maxK": max_k_high}
        else:
            speculation = {"mode": mode, "k": max(k_low, 1 if mode == "fixed" else 0), "maxK": max_k_low}
        sets.append((f"{method}-{mode}-{'high' if high else 'low'}", {
            "draft": {"method": method},
            "scheduling": {"policy": policies[i % len(policies)], "speculation": speculation,
                           "maxBatchSize": batch_high if high else batch_low}}))
    taken = [crd.apply_defaults({"target": {}, **spec}) for _, spec in sets]
    scheduling = [s["scheduling"] for s in taken]
    assert {s["policy"] for s in scheduling} == set(policies)
    assert {s["speculation"]["mode"] for s in scheduling} == set(modes)
    assert {s["draft"]["method"] for s in taken} == set(methods)
    assert {k_low, k_high} <= {s["speculation"]["k"] for s in scheduling}
    assert {max_k_low, max_k_high} <= {s["speculation"]["maxK"] for s in scheduling}
    assert {batch_low, batch_high} <= {s["maxBatchSize"] for s in scheduling}
    return sets


def _body(spec: dict, target: Path, draft: Path) -> dict:
    spec = copy.deepcopy(spec)
    spec["target"] = {**spec.get("target", {}), "model": {"uri": str(target)}}
    spec.setdefault("draft", {})
    if spec["draft"].get("method", c.DEFAULT_DRAFT_METHOD) == "model":
        spec["draft"]["model"] = {"uri": str(draft)}
    return {"apiVersion": "specd.io/v1alpha1", "kind": crd.KIND,
            "metadata": {"name": "walk", "namespace": "ns", "uid": "u"}, "spec": spec}


def _command(children: list[dict], name: str) -> list[str]:
    [deployment] = [x for x in children if x["kind"] == "Deployment" and x["metadata"]["name"] == name]
    return deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def _local(command: list[str], port: int) -> list[str]:
    """A pod's `specd ...` command on loopback: this interpreter, the given port."""
    assert command[0] == "specd"
    args = list(command[1:])
    args[args.index("--port") + 1] = str(port)
    for flag in ("--metrics-port", "--http-port"):  # every pod has its own; on one host: any free port
        if flag in args:
            args[args.index(flag) + 1] = "0"
    return [sys.executable, "-m", "specd.cli", *args, "--host", "127.0.0.1"]


def test_everything_the_schema_admits_runs(tmp_path: Path) -> None:
    from specd.client import Client
    from specd.demo.paths import demo_model_dirs
    from specd.router.local import LocalStack, Process, _spawn, free_port

    target_dir, draft_dir = demo_model_dirs()
    stack = LocalStack()

    def start(name: str, command: list[str], port: int) -> Process:
        process = Process(name, f"127.0.0.1:{port}", _spawn(command, name, tmp_path))
        (stack.routers if name.startswith("router") else stack.workers).append(process)
        return process

    def log(process: Process) -> str:
        return (tmp_path / f"{process.name}.log").read_text()[-3000:]

    try:
        # workers: the operator's target command with each admitted --draft-method, and its draft command
        model_body = builders.build_children(_body({}, target_dir, draft_dir), builders.OperatorConfig())
        targets = {}
        for method in _node("draft.method")["enum"]:
            port = free_port()
            command = _local(_command(model_body, "walk-target"), port)
            if "--draft-method" not in command:
                command += ["--draft-method", method]
            targets[method] = start(f"target-{method}", command, port)
        port = free_port()
        draft = start("draft", _local(_command(model_body, "walk-draft"), port), port)
        # every other dtype: a target and a draft worker from the pods' commands of a spec that sets it
        by_dtype = {}
        for dtype in _node("target.dtype")["enum"]:
            if dtype == c.DEFAULT_DTYPE:
                continue
            children = builders.build_children(_body({"target": {"dtype": dtype}, "draft": {"dtype": dtype}},
                                                     target_dir, draft_dir), builders.OperatorConfig())
            pair = []
            for role in ("target", "draft"):
                command = _local(_command(children, f"walk-{role}"), port := free_port())
                assert command[command.index("--dtype") + 1] == dtype
                pair.append(start(f"{role}-{dtype}", command, port))
            by_dtype[dtype] = pair
        for worker in stack.workers:
            try:
                stack.wait_serving(worker, 300)
            except SpecdError as exc:
                pytest.fail(f"{exc}\n{log(worker)}")

        # one router per combination set, with the ConfigMap's configuration and the pod's command
        routers = []
        for name, spec in _combinations():
            children = builders.build_children(_body(spec, target_dir, draft_dir), builders.OperatorConfig())
            [config_map] = [x for x in children if x["kind"] == "ConfigMap"]
            rendered = yaml.safe_load(config_map["data"]["router.yaml"])
            path = tmp_path / f"{name}.yaml"
            path.write_text(config_map["data"]["router.yaml"])
            command = _local(_command(children, "walk-router"), port := free_port())
            command[command.index("--config") + 1] = str(path)
            method = crd.apply_defaults(spec.copy() | {"target": {}})["draft"]["method"]
            command += ["--target", targets[method].address]
            if rendered["discovery"]["draftService"]:
                command += ["--draft", draft.address]
            routers.append((start(f"router-{name}", command, port), rendered))
        for router, rendered in routers:
            try:
                stack.wait_serving(router, 120)
            except SpecdError as exc:
                pytest.fail(f"{rendered}: {exc}\n{log(router)}")
            with Client(router.address, timeout=60) as client:
                result = client.generate("def main():", 8, ignore_eos=True)
                stats = client.stats()
            mode, k = rendered["speculation"]["mode"], rendered["speculation"]["k"]
            assert result.usage.generated_tokens == 8, rendered
            assert (stats.policy, stats.speculation) == (rendered["policy"], c.speculation_label(mode, k))
            if mode == "none" or rendered["discovery"]["draftService"] is None:
                assert result.usage.draft_tokens_proposed == 0, rendered
            if mode == "fixed" and rendered["discovery"]["draftService"]:
                assert result.usage.draft_tokens_proposed > 0, rendered
        for dtype, (target, draft_worker) in by_dtype.items():  # speculative decoding in each dtype
            router = start(f"router-{dtype}", _local(["specd", "router", "--port", "0", "--speculation", "fixed:2",
                                                      "--target", target.address, "--draft", draft_worker.address],
                                                     port := free_port()), port)
            stack.wait_serving(router, 120)
            with Client(router.address, timeout=60) as client:
                result = client.generate("def main():", 8, ignore_eos=True)
            assert result.usage.generated_tokens == 8 and result.usage.draft_tokens_proposed > 0, dtype
            assert f"on cpu {dtype}" in log(target) and f"on cpu {dtype}" in log(draft_worker)
    finally:
        stack.stop(grace_s=10)


# --- (c) router configuration errors name the field -------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("speculation: {maxK: 17}", "router config: speculation.maxK must be ≤ 16, got 17"),
    ("speculation: {k: -1}", "router config: speculation.k must be ≥ 0, got -1"),
    ("policy: bogus", "router config: policy must be one of laps-sd, fcfs, las, sjf, got 'bogus'"),
    ("speculation: {mode: bogus}", "router config: speculation.mode must be one of goodput, fixed, none"),
    ("speculation: {mode: true}", "router config: speculation.mode must be one of"),
    ("maxBatchSize: 4097", "router config: maxBatchSize must be ≤ 4096, got 4097"),
])
def test_router_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(SpecdError) as raised:
        config_from_dict(yaml.safe_load(text))
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("text", ["speculation: {mode: off}", "speculation: {mode: 'off'}",
                                  "speculation: {mode: none}", "speculation: {mode: false}", "speculation: off"])
def test_off_and_yaml_false_are_none(text: str) -> None:
    config = config_from_dict(yaml.safe_load(text))
    assert config.speculation == "none" and config.speculation_label == "none"


def test_the_bounds_themselves_parse() -> None:
    high = config_from_dict({"speculation": {"mode": "fixed", "k": c.MAX_K, "maxK": c.MAX_K},
                             "maxBatchSize": c.MAX_BATCH_SIZE.maximum})
    assert (high.k, high.max_k, high.max_batch_size) == (16, 16, 4096)
    low = config_from_dict({"speculation": {"k": 0, "maxK": 1}, "maxBatchSize": 1})
    assert (low.k, low.max_k, low.max_batch_size) == (0, 1, 1)
