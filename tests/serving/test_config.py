"""Router configuration: the operator's YAML, overrides, and clear errors."""

from __future__ import annotations

import pytest
import yaml

from specd.errors import SpecdError
from specd.router.config import RouterConfig, config_from_dict, load_config


def test_reads_the_operator_router_yaml(tmp_path):
    # the shape operator/builders.py renders (draftService is null without a draft pool)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({
        "policy": "sjf", "speculation": {"mode": "fixed", "k": 3, "maxK": 6}, "maxBatchSize": 16,
        "discovery": {"namespace": "ns", "targetService": "svc-target", "draftService": None,
                      "targetPort": 50052, "draftPort": 50053}}))
    config = load_config(path)
    assert (config.policy, config.speculation, config.k, config.max_k, config.max_batch_size) == (
        "sjf", "fixed", 3, 6, 16)
    assert config.speculation_label == "fixed:3"
    assert config.discovery.target_service == "svc-target" and config.discovery.draft_service == ""


def test_defaults_and_command_line_forms():
    config = config_from_dict({})
    assert (config.policy, config.speculation, config.max_k, config.pipeline_depth) == ("laps-sd", "goodput", 8, 2)
    assert config.queues.queues == 4 and config.queues.first_quantum == 8
    assert RouterConfig().with_speculation("fixed:5").k == 5
    assert config_from_dict({"speculation": {"mode": "fixed:2"}}).k == 2
    assert RouterConfig().with_speculation("off").speculation == "none"  # the alias


def test_direct_construction_and_replace_are_checked_too():
    from dataclasses import replace

    with pytest.raises(SpecdError, match="speculation.maxK must be ≤ 16, got 20"):
        RouterConfig(max_k=20)
    with pytest.raises(SpecdError, match="maxBatchSize must be ≥ 1"):
        replace(RouterConfig(), max_batch_size=0)
    assert RouterConfig(speculation="off").speculation == "none"
    with pytest.raises(SpecdError, match="fixed:K"):
        RouterConfig().with_speculation("fixed:17")
    custom = config_from_dict({"lapsSd": {"queues": 2, "firstQuantum": 3, "stabilityWindow": 4}})
    assert (custom.queues.queues, custom.queues.first_quantum, custom.queues.stability_window) == (2, 3, 4)


@pytest.mark.parametrize("raw,message", [
    ({"policy": "random"}, "router config: policy must be one of laps-sd, fcfs, las, sjf, got 'random'"),
    ({"speculation": {"mode": "sometimes"}}, "speculation.mode must be one of goodput, fixed, none"),
    ({"speculation": {"k": 99}}, "speculation.k must be ≤ 16, got 99"),
    ({"maxBatchSize": 0}, "maxBatchSize must be ≥ 1, got 0"),
    ({"maxBatchSize": "lots"}, "maxBatchSize must be an integer, got 'lots'"),
    ({"maxBatchSize": True}, "maxBatchSize must be an integer, got True"),
    ({"speculation": {"mode": "fixed:x"}}, "speculation mode 'fixed:x'"),
    ({"discovery": {"targetPort": 0}}, "discovery.targetPort must be ≥ 1, got 0"),
    ({"lapsSd": {"queues": 0}}, "lapsSd.queues must be ≥ 1, got 0"),
    ([1, 2], "router config must be a mapping"),
])
def test_bad_values_are_named(raw, message):
    with pytest.raises(SpecdError, match=message):
        config_from_dict(raw)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecdError, match="router config not found"):
        load_config(tmp_path / "nope.yaml")
