"""OpenAI-compatible HTTP on the router: /v1/completions, /v1/chat/completions, /v1/models.

Same process, same scheduler, same validation as the gRPC API: each request becomes a
`GenerateRequest` for `RequestBuilder` (so a bad field is refused the same way, named with its
OpenAI spelling) and streams from the scheduler's events. Streaming responses are server-sent
events ending in `data: [DONE]`; errors have OpenAI's shape {"error": {message, type, param,
code}} with the matching HTTP status.

Extensions: `speculation: {"disabled": true}` or `{"max_k": K}` (the gRPC API's
SpeculationControl), and `ignore_eos`. `n` other than 1, `logprobs`, `echo`, `best_of`,
`suffix`, `tools` and `response_format` are refused with a 400 naming the field.

Chat messages become one prompt: a model directory's tokenizer carries no chat template here, so
the messages are laid out as "role: content" lines followed by "assistant:" (fine for the demo
models, which are not chat models; a served chat model wants its own template).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import grpc
from aiohttp import web

from specd.proto.v1 import common_pb2, serving_pb2
from specd.router.request import Request
from specd.router.scheduler import RequestFailed
from specd.worker.tokenizer import StreamDecoder

log = logging.getLogger(__name__)
# gRPC status -> (HTTP status, OpenAI error type)
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
}
_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "tool_choice", "functions",
                "response_format", "logit_bias")
# the gRPC field a RequestBuilder error names -> the OpenAI request's field
_FIELD_NAMES = {"max_new_tokens": "max_tokens", "sampling.temperature": "temperature", "sampling.top_p": "top_p",
                "speculation.max_k": "speculation.max_k", "prompt_tokens": "prompt"}
MAX_STOP_SEQUENCES = 4


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def response(self) -> web.Response:
        return web.json_response({"error": {"message": str(self), "type": self.kind, "param": self.param,
                                            "code": self.code}}, status=self.status)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", f"{param}: {message}", param)


def _from_failure(failure: RequestFailed) -> ApiError:
    status, kind = _HTTP_STATUS.get(failure.code, (500, "server_error"))
    message = str(failure)
    field, colon, _ = message.partition(":")
    param = _FIELD_NAMES.get(field, field) if colon and " " not in field else None
    if param and param != field:
        message = param + message[len(field):]
    return ApiError(status, kind, message, param, failure.code.name.lower())


@dataclass(frozen=True)
class Completion:
    """What one HTTP request asks for, in the router's terms."""

    message: serving_pb2.GenerateRequest
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse(body: Any, prompt: str) -> Completion:
    """The fields both endpoints share; `prompt` is the text to continue."""
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, 0):
            raise _invalid(name, "not supported by specd")
    if body.get("n", 1) != 1:
        raise _invalid("n", f"only n = 1 is supported, got {body.get('n')!r}")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _invalid("max_tokens", f"must be an integer, got {max_tokens!r}")
    temperature = body.get("temperature", 1.0)  # OpenAI's default
    top_p = body.get("top_p", 1.0)
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _invalid(name, f"must be a number, got {value!r}")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise _invalid("seed", f"must be an integer in [0, 2^63), got {seed!r}")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise _invalid("stop", f"a string or up to {MAX_STOP_SEQUENCES} non-empty strings")
    speculation = body.get("speculation") or {}
    if not isinstance(speculation, dict) or set(speculation) - {"disabled", "max_k"}:
        raise _invalid("speculation", "an object with disabled (bool) and/or max_k (int)")
    sampling = common_pb2.SamplingParams(temperature=float(temperature), top_p=float(top_p))
    if seed is not None:
        sampling.seed = seed
    message = serving_pb2.GenerateRequest(  # RequestBuilder checks the values (max_tokens >= 1, ...)
        prompt=prompt, max_new_tokens=max(max_tokens, 0), sampling=sampling,
        speculation=serving_pb2.SpeculationControl(disabled=bool(speculation.get("disabled", False)),
                                                   max_k=int(speculation.get("max_k", 0))),
        ignore_eos=bool(body.get("ignore_eos", False)))
    options = body.get("stream_options") or {}
    return Completion(message, stop, bool(body.get("stream", False)), bool(options.get("include_usage", False)))


def chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "a non-empty list of {role, content}")
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(f"messages[{i}]", "needs a role and a content")
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise _invalid(f"messages[{i}].content", "must be a string or a list of text parts")
        lines.append(f"{m['role']}: {content}")
    return "\n".join(lines) + "\nassistant:"


class StopMatcher:
    """Cuts the streamed text at the first stop sequence, holding back a tail that could begin one."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """New text -> the part that is safe to send now."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = max((n for s in self.stop for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class OpenAIFrontend:
    def __init__(self, builder, scheduler, model_path: str) -> None:
        self.builder = builder
        self.scheduler = scheduler
        self.model_id = PurePosixPath(model_path).name or model_path
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:  # unknown path or method, in OpenAI's shape too
            return ApiError(exc.status, "invalid_request_error", exc.reason).response()
        except Exception as exc:  # a bug: still an answer the client can read
            log.exception("OpenAI HTTP request failed")
            return ApiError(500, "server_error", f"internal error: {exc}").response()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "specd"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _invalid("prompt", "a string (one prompt per request)")
        return await self._serve(request, parse(body, prompt), chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        return await self._serve(request, parse(body, chat_prompt(body.get("messages"))), chat=True)

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "invalid_request_error", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "the body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise ApiError(404, "invalid_request_error", f"model {model!r} does not exist; this router serves "
                                                         f"{self.model_id!r}", "model", "model_not_found")
        return body

    async def _serve(self, request: web.Request, completion: Completion, chat: bool) -> web.StreamResponse:
        try:
            r = self.builder.build(completion.message)
            self.scheduler.admit(r)
        except RequestFailed as exc:
            raise _from_failure(exc) from None
        reply = _Reply(self.model_id, chat, r)
        try:
            if completion.stream:
                return await self._stream(request, completion, r, reply)
            text, reason = "", None
            async for delta, reason in self._texts(r, completion.stop):
                text += delta
            return web.json_response(reply.whole(text, reason))
        finally:
            self.scheduler.cancel(r)  # no-op when finished; frees the caches when cut by a stop sequence

    async def _stream(self, request: web.Request, completion: Completion, r: Request, reply: "_Reply"):
        first: tuple[str, str | None] | None = None
        events = self._texts(r, completion.stop)
        try:  # an error before the first token still gets a proper status, not a broken stream
            first = await anext(events)
        except StopAsyncIteration:
            pass
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(payload: dict | str) -> None:
            await response.write(f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode())

        if reply.chat:
            await send(reply.chunk("", None, role=True))
        pending = [first] if first else []
        try:
            async for delta, reason in _chain(pending, events):
                if delta or reason:
                    await send(reply.chunk(delta, reason))
        except ApiError as exc:  # after the first event: report it in the stream
            await send({"error": {"message": str(exc), "type": exc.kind, "param": exc.param, "code": exc.code}})
        if completion.include_usage:
            await send({**reply.chunk("", None), "choices": [], "usage": reply.usage()})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _texts(self, r: Request, stop: tuple[str, ...]) -> AsyncIterator[tuple[str, str | None]]:
        """(text delta, finish reason or None) until the request ends or a stop sequence appears."""
        decoder, matcher = StreamDecoder(self.builder.tokenizer), StopMatcher(stop)
        while (event := await r.events.get()) is not None:
            if isinstance(event, RequestFailed):
                raise _from_failure(event)
            text = matcher.push(decoder.push(event))
            if matcher.stopped:
                yield text, "stop"
                return
            if text:
                yield text, None
        text = matcher.push(decoder.flush())
        if matcher.stopped:
            yield text, "stop"
            return
        reason = "length" if r.finish_reason == serving_pb2.FINISH_REASON_LENGTH else "stop"
        yield text + matcher.flush(), reason


async def _chain(first: list, rest: AsyncIterator):
    for item in first:
        yield item
        if item[1] is not None:
            return
    async for item in rest:
        yield item


class _Reply:
    """The response objects of one request, completion or chat flavour."""

    def __init__(self, model: str, chat: bool, r: Request) -> None:
        self.model, self.chat, self.r = model, chat, r
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def usage(self) -> dict:
        prompt, completion = len(self.r.prompt), self.r.generated
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, text: str, reason: str | None) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage()}

    def chunk(self, text: str, reason: str | None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}


@dataclass
class HttpServer:
    port: int
    _runner: web.AppRunner

    @classmethod
    async def start(cls, frontend: OpenAIFrontend, host: str, port: int) -> "HttpServer":
        runner = web.AppRunner(frontend.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return cls(runner.addresses[0][1], runner)  # the port bound, when 0 was asked for

    async def stop(self) -> None:
        await self._runner.cleanup()
