"""OpenAI's completions API, the part Nano-SLM serves: parse and check a request, shape the responses; the fields
and shapes that chat (chat_api.py) shares with it."""

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from ..config import Sampling
from ..errors import brief
from . import limits
from .limits import ApiError

# OpenAI fields that change what the server would have to do; refused unless they ask for the default
UNSUPPORTED = {"logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1),
               "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logit_bias": (None, {})}


@dataclass(frozen=True)
class Request:
    """What /v1/completions and /v1/chat/completions share: the model, sampling, rows and how to answer."""

    model: Optional[str]
    max_tokens: int
    temperature: float
    top_k: Optional[int]  # None = off
    top_k_given: bool  # False: the default applies, capped at the model's vocabulary
    top_p: float
    seed: Optional[int]  # None = a random one
    n: int
    stop: list[str]
    stream: bool
    include_usage: bool

    def sampling(self, vocab_size: int) -> Sampling:
        """The engine's settings for a model of `vocab_size` ids; top_k is checked against it here, only here."""
        top_k = self.top_k
        if top_k is not None and top_k > vocab_size:
            if self.top_k_given:  # more than this model has: refused, naming its vocabulary as the bound
                limits.TOP_K.check(top_k, high=vocab_size)
            top_k = None  # the default asks for more than this model has: all of them
        return Sampling(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=top_k, top_p=self.top_p)


@dataclass(frozen=True)
class CompletionRequest(Request):
    prompts: list[str]


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {brief(err)}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def parse_completion(data: dict) -> CompletionRequest:
    """Check every field of a /v1/completions body; ApiError names the first bad one and what it allows."""
    prompts = _prompts(data.get("prompt", ""))
    return CompletionRequest(**parse_shared(data, len(prompts), UNSUPPORTED), prompts=prompts)


def parse_shared(data: dict, inputs: int, unsupported: dict, max_tokens: limits.Limit = limits.MAX_TOKENS) -> dict:
    """The Request fields of a body that asks for `inputs` texts n times each; `max_tokens` names the field the
    length is read from (chat has two names for it)."""
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string (GET /v1/models lists them); got {limits._show(model)}",
                       param="model", code="invalid_value")
    n = limits.N.check(data.get("n", 1))
    if n is None:
        n = 1
    if inputs * n > limits.MAX_ROWS:
        raise ApiError(400, f"n times the number of prompts must be at most {limits.MAX_ROWS}; got "
                            f"{n} x {inputs}", param="n", code="invalid_value")
    for name, allowed in unsupported.items():
        if name in data and data[name] not in allowed:
            raise ApiError(400, f"{name} is not supported by this server; leave it out", param=name,
                           code="unsupported_parameter")
    stream_options = data.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object such as {\"include_usage\": true}",
                       param="stream_options", code="invalid_value")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false; got {limits._show(stream)}", param="stream",
                       code="invalid_value")
    include_usage = (stream_options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options",
                       code="invalid_value")
    length = data.get(max_tokens.name)
    return dict(
        model=model,
        max_tokens=limits.MAX_TOKENS.default if length is None else max_tokens.check(length),
        temperature=_given(limits.TEMPERATURE, data),
        top_k=limits.TOP_K.check(data["top_k"]) if "top_k" in data else limits.TOP_K.default,
        top_k_given="top_k" in data,
        top_p=_given(limits.TOP_P, data),
        seed=limits.SEED.check(data["seed"]) if data.get("seed") is not None else None,
        n=n,
        stop=_stop(data.get("stop")),
        stream=stream,
        include_usage=include_usage,
    )


def _given(limit: limits.Limit, data: dict):
    value = data.get(limit.name)
    return limit.default if value is None else limit.check(value)


def _prompts(prompt: Any) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, f"prompt must be a string or a list of 1 to {limits.MAX_ROWS} strings; got "
                            f"{limits._show(prompt)}", param="prompt", code="invalid_value")
    if len(prompts) > limits.MAX_ROWS:
        raise ApiError(400, f"prompt may list at most {limits.MAX_ROWS} strings; got {len(prompts)}",
                       param="prompt", code="invalid_value")
    for p in prompts:
        if len(p) > limits.MAX_PROMPT_CHARS:
            raise ApiError(400, f"prompt must be at most {limits.MAX_PROMPT_CHARS} characters; got {len(p)} "
                                f"(the model reads only its last context-size tokens anyway)",
                           param="prompt", code="prompt_too_long")
    return prompts


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    ok = isinstance(stops, list) and len(stops) <= limits.MAX_STOP and all(
        isinstance(s, str) and 1 <= len(s) <= limits.MAX_STOP_CHARS for s in stops)
    if not ok:
        raise ApiError(400, f"stop must be a string or a list of at most {limits.MAX_STOP} strings, each 1 to "
                            f"{limits.MAX_STOP_CHARS} characters; got {limits._show(stop)}", param="stop",
                       code="invalid_value")
    return stops


class Shaper:
    """The JSON objects of one completion: OpenAI's `text_completion` shape, with Nano-SLM's `seed` and `timing`.

    nanoslm.serve.chat_api's ChatShaper gives the same answers in the chat shapes; delivery.py uses only
    opening, events, usage_chunk and completion.
    """

    prefix, object, stream_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, model: str, seed: int):
        self.id, self.created = f"{self.prefix}-{uuid.uuid4().hex[:24]}", int(time.time())
        self.model, self.seed = model, seed

    def _base(self, stream: bool = True) -> dict:
        return {"id": self.id, "object": self.stream_object if stream else self.object, "created": self.created,
                "model": self.model, "system_fingerprint": None}

    def opening(self, rows: int) -> list[dict]:
        """The chunks a stream starts with, before any text."""
        return []

    def events(self, index: int, text: str, finish_reason: Optional[str]) -> list[dict]:
        """The chunks of one piece of a choice's text (and its end, when finish_reason is set)."""
        return [self.chunk(index, text, finish_reason)]

    def chunk(self, index: int, text: str, finish_reason: Optional[str]) -> dict:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base(), "choices": [choice]}

    def usage_chunk(self, usage: dict, timing: dict) -> dict:
        return {**self._base(), "choices": [], "usage": usage, "seed": self.seed, "timing": timing}

    def choice(self, index: int, text: str, finish_reason: str) -> dict:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def completion(self, texts: list[str], finishes: list[str], usage: dict, timing: dict) -> dict:
        choices = [self.choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finishes))]
        return {**self._base(stream=False), "choices": choices, "usage": usage, "seed": self.seed, "timing": timing}


def sse(obj: Any) -> bytes:
    """One server-sent event, as OpenAI streams them."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
