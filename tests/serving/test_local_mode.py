"""`specd up` end to end: processes on loopback, generation through the SDK, graceful SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading

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

        assert generate_remote(argparse.Namespace(address=address, prompt=PROMPTS[0], max_tokens=8, k=2)) == 0
        assert capsys.readouterr().out.strip()
        stats = subprocess.run([sys.executable, "-m", "specd.cli", "stats", "--address", address, "--json"],
                               capture_output=True, text=True, timeout=60)
        figures = json.loads(stats.stdout)
        assert figures["finished_requests"] == 1 and figures["speculation"] == "fixed:2", stats.stderr
        assert figures["live_targets"] == figures["live_drafts"] == 1

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
