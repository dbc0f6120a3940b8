"""The router's OpenAI-compatible HTTP, driven by the official `openai` package: completions and
chat, streaming and not, stop sequences, seeds, the speculation extension, errors in OpenAI's shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from serving_support import PROMPTS

from specd.router.config import RouterConfig
from specd.router.discovery import StaticDiscovery


@pytest.fixture
def router(loop, workers):
    from specd.router.service import start_router

    config = RouterConfig(policy="laps-sd", max_batch_size=4).with_speculation("fixed:2")
    discovery = StaticDiscovery([workers.addresses["target"]], [workers.addresses["draft"]])
    running = loop.run(start_router(config, discovery, ready_timeout_s=30, http_port=0))
    yield running
    loop.run(running.stop(grace_s=1))


@pytest.fixture
def client(router):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{router.http.port}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _model(client) -> str:
    (model,) = client.models.list().data
    return model.id


def test_completion_equals_plain_decoding_streamed_or_not(client, reference, tokenizer):
    model = _model(client)
    assert model == "target"  # the model directory's name
    expected = tokenizer.decode(reference(tokenizer.encode(PROMPTS[0]), 12))
    whole = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens == len(tokenizer.encode(PROMPTS[0]))
    chunks = list(client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_speculation_extension_changes_nothing_in_the_output(client, reference, tokenizer):
    expected = tokenizer.decode(reference(tokenizer.encode(PROMPTS[1]), 10))
    for speculation in ({"disabled": True}, {"max_k": 1}, {}):
        out = client.completions.create(model=_model(client), prompt=PROMPTS[1], max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True, "speculation": speculation})
        assert out.choices[0].text == expected, speculation


def test_chat_completion_streamed_and_not(client):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    whole = client.chat.completions.create(model=_model(client), messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model=_model(client), messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_sequence_cuts_the_text_and_ends_the_request(client, reference, tokenizer, workers):
    full = tokenizer.decode(reference(tokenizer.encode(PROMPTS[2]), 24))
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    for stream in (False, True):
        reply = client.completions.create(model=_model(client), prompt=PROMPTS[2], max_tokens=24, temperature=0,
                                          stop=[stop], stream=stream, extra_body={"ignore_eos": True})
        if stream:
            chunks = list(reply)
            text, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            text, reason = reply.choices[0].text, reply.choices[0].finish_reason
        assert text == full[: full.index(stop)] and reason == "stop", (stream, text, stop)


def test_a_seed_reproduces_a_sampled_completion(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=_model(client), prompt=PROMPTS[3], max_tokens=16, temperature=0.9,
                                         top_p=0.95, seed=seed, extra_body={"ignore_eos": True}).choices[0].text
    first = sample(1234)
    assert sample(1234) == first == sample(1234)  # under fixed:2 and whatever batching
    assert any(sample(seed) != first for seed in (1, 2, 3))


@pytest.mark.parametrize("kwargs,status,param", [
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 100000}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"n": 2}, 400, "n"),
    ({"logprobs": 2}, 400, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "gpt-4"}, 404, "model"),
])
def test_errors_have_openai_shape_and_status(client, kwargs, status, param):
    arguments = {"model": _model(client), "prompt": "x", "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(**arguments)
    assert err.value.status_code == status
    body = err.value.response.json()["error"]
    assert body["param"] == param and body["message"] and body["type"]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unknown_paths_and_bad_bodies_answer_in_the_same_shape(router):
    base = f"http://127.0.0.1:{router.http.port}/v1"
    status, body = _post(f"{base}/embeddings", b'{"input": "x"}')
    assert status == 404 and body["error"]["message"]
    status, body = _post(f"{base}/completions", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
