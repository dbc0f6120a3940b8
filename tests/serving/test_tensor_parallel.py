"""A target worker sharded over two processes (DeepSpeed, gloo) serves through the router unchanged."""

from __future__ import annotations

from serving_support import PROMPTS

from specd.client import Client
from specd.router.config import RouterConfig
from specd.router.local import LocalStack


def test_tensor_parallel_target_matches_plain_decoding(models, start_router, workers, reference, tokenizer, tmp_path):
    stack = LocalStack()
    try:
        worker = stack.start_worker("target", models[0], log_dir=tmp_path, tensor_parallel_size=2)
        stack.wait_serving(worker, 180)
        address = start_router(RouterConfig().with_speculation("fixed:2"), [worker.address],
                               [workers.addresses["draft"]])
        with Client(address, timeout=60) as client:
            for prompt in PROMPTS[:2]:
                result = client.generate(prompt, 16, ignore_eos=True)
                assert result.tokens == reference(tokenizer.encode(prompt), 16)
                assert result.usage.draft_tokens_proposed > 0
    finally:
        stack.stop(grace_s=30)
    assert worker.popen.returncode == 0  # SIGTERM: the followers were shut down cleanly too
