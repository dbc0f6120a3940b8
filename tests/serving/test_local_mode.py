"""`specd up` end to end: processes on loopback, generation through the SDK, graceful SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families
from serving_support import PROMPTS

from specd.client import Client
from specd.router.cli import generate_remote


def test_up_serves_and_drains_on_sigterm(models, reference, tokenizer, capsys):
    target, draft = models
    up = subprocess.Popen([sys.executable, "-m", "specd.cli", "up", "--target-model", str(target),
                           "--draft-model", str(draft), "--port", "0", "--drafts", "1", "--policy", "laps-sd",
                           "--speculation", "fixed:2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = up.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), up.stderr.read() if up.poll() is not None else address
        http_url = up.stdout.readline().strip().removeprefix("http: ")
        assert http_url.startswith("http://127.0.0.1:") and http_url.endswith("/v1")
        metrics_url = up.stdout.readline().strip().removeprefix("metrics: ")
        assert metrics_url.startswith("http://127.0.0.1:") and metrics_url.endswith("/metrics")

        assert generate_remote(argparse.Namespace(address=address, prompt=PROMPTS[0], max_tokens=8, k=2)) == 0
        assert capsys.readouterr().out.strip()
        stats = subprocess.run([sys.executable, "-m", "specd.cli", "stats", "--address", address, "--json"],
                               capture_output=True, text=True, timeout=60)
        figures = json.loads(stats.stdout)
        assert figures["finished_requests"] == 1 and figures["speculation"] == "fixed:2", stats.stderr
        assert figures["live_targets"] == figures["live_drafts"] == 1

        # the router's Prometheus metrics after that one request, parsed by prometheus_client
        samples = _scrape(metrics_url)
        labels = {"service": "local", "pool": "target", "policy": "laps-sd", "speculation": "fixed:2"}

        def value(name: str, **extra: str) -> float:
            return samples[(name, frozenset({**labels, **extra}.items()))]
        assert value("specd_request_success_total", finished_reason="length") == 1
        assert value("specd_generation_tokens_total") == 8
        drafted = value("specd_spec_decode_num_draft_tokens_total")
        accepted = value("specd_spec_decode_num_accepted_tokens_total")
        assert drafted > 0 and 0 <= accepted <= drafted
        per_position = {dict(key)["position"]: v for (name, key), v in samples.items()
                        if name == "specd_spec_decode_num_accepted_tokens_per_pos_total"}
        assert sum(per_position.values()) == accepted and set(per_position) <= {"0", "1"}  # k = 2
        assert value("specd_spec_decode_num_drafts_total") >= drafted / 2  # at most 2 drafts per step
        assert value("specd_time_to_first_token_seconds_count") == 1
        assert value("specd_num_requests_running") == 0 and value("specd_speculation_k") == 2
        # the OpenAI client against the same stack's HTTP base URL: one more finished request
        with openai.OpenAI(base_url=http_url, api_key="unused", max_retries=0) as http:
            completion = http.completions.create(model=http.models.list().data[0].id, prompt=PROMPTS[0],
                                                 max_tokens=8, temperature=0)
        assert completion.usage.completion_tokens >= 1 and completion.choices[0].finish_reason in ("stop", "length")
        samples = _scrape(metrics_url)
        assert sum(v for (name, _), v in samples.items() if name == "specd_request_success_total") == 2

        # a long stream is under way when SIGTERM arrives: it must finish, whole
        result = {}
        with Client(address, timeout=120) as client:
            stream = iter(client.stream(PROMPTS[1], 300, ignore_eos=True))
            first = next(stream)

            def drain():
                result["tokens"] = first.tokens + [t for chunk in stream for t in chunk.tokens]

            reader = threading.Thread(target=drain)
            reader.start()
            children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True,
                                                           text=True).stdout.split()]
            assert len(children) == 3  # target, draft, router
            up.send_signal(signal.SIGTERM)
            reader.join(120)
        assert result["tokens"] == reference(tokenizer.encode(PROMPTS[1]), 300)
        assert up.wait(60) == 0
        for pid in children:  # every child was stopped and reaped
            assert not os.path.exists(f"/proc/{pid}")
    finally:
        if up.poll() is None:
            up.kill()


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_free_ports_are_never_handed_out_twice():
    from specd.router.local import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
