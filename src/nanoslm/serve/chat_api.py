"""OpenAI's chat completions API over an instruction-tuned ("chat") checkpoint: parse and check a request, render
its conversation to the prompt ids, shape the answers (`chat.completion` and `chat.completion.chunk`).

The conversation is rendered by nanoslm.conversation, the renderer fine-tuning used: messages' text is plain text,
so a user who types "<|user|>" cannot forge a turn. The sampling fields are the completions API's (protocol.py).
"""

from dataclasses import dataclass, replace
from typing import Optional

from ..conversation import ChatTokens, check_messages, render
from ..errors import UserError
from . import limits, protocol
from .limits import ApiError

# OpenAI chat fields that change what the server would have to do; refused unless they ask for the default
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "frequency_penalty": (None, 0),
               "presence_penalty": (None, 0), "logit_bias": (None, {}), "tools": (None, []),
               "tool_choice": (None, "none"), "functions": (None, []), "response_format": (None, {"type": "text"})}

MAX_COMPLETION_TOKENS = replace(limits.MAX_TOKENS, name="max_completion_tokens")  # OpenAI's newer name

NOT_CHAT = ("model {id!r} is not instruction-tuned: it continues stories (POST /v1/completions) but does not answer "
            "requests; serve a chat model: one pre-trained with requests (requests.mix > 0, the default) or tuned on "
            "conversations (the finetune stage's models/tuned/best.pt)")


@dataclass(frozen=True)
class ChatRequest(protocol.Request):
    messages: list[dict]


def parse_chat(data: dict) -> ChatRequest:
    """Check every field of a /v1/chat/completions body; ApiError names the first bad one and what it allows."""
    try:
        messages = check_messages(data.get("messages"), "the request")
    except UserError as err:
        raise ApiError(400, str(err), param="messages", code="invalid_value") from None
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.MAX_PROMPT_CHARS:
        raise ApiError(400, f"the messages' content must be at most {limits.MAX_PROMPT_CHARS} characters in all; got "
                            f"{chars}", param="messages", code="prompt_too_long")
    both = data.get("max_tokens") is not None and data.get("max_completion_tokens") is not None
    if both and data["max_tokens"] != data["max_completion_tokens"]:
        raise ApiError(400, "max_tokens and max_completion_tokens differ; give one of them", param="max_tokens",
                       code="invalid_value")
    length = MAX_COMPLETION_TOKENS if data.get("max_completion_tokens") is not None else limits.MAX_TOKENS
    return ChatRequest(**protocol.parse_shared(data, 1, UNSUPPORTED, length), messages=messages)


def prompt_ids(model_id: str, messages: list[dict], enc, chat: Optional[ChatTokens], block_size: int) -> list[int]:
    """The ids the model continues: the conversation, then <|assistant|>. ApiError when the model is not a chat
    model or the conversation leaves no room for a reply in its context."""
    if chat is None:
        raise ApiError(400, NOT_CHAT.format(id=model_id), param="model", code="model_not_chat")
    ids, _ = render(messages, enc, chat, reply=True)
    if len(ids) >= block_size:  # the model would lose the conversation's start, and with it who said what
        raise ApiError(400, f"the conversation is {len(ids)} tokens with the reply's marker, and the model's context "
                            f"is {block_size} including the reply; shorten or drop messages", param="messages",
                       code="context_length_exceeded")
    return ids


class ChatShaper(protocol.Shaper):
    """The answers in OpenAI's chat shapes: a stream opens each choice with the assistant's role, then content
    deltas, then an empty delta with the finish reason."""

    prefix, object, stream_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def _delta(self, index: int, delta: dict, finish_reason: Optional[str]) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._base(), "choices": [choice]}

    def opening(self, rows: int) -> list[dict]:
        return [self._delta(i, {"role": "assistant", "content": ""}, None) for i in range(rows)]

    def events(self, index: int, text: str, finish_reason: Optional[str]) -> list[dict]:
        out = [self._delta(index, {"content": text}, None)] if text else []
        return out + ([self._delta(index, {}, finish_reason)] if finish_reason else [])

    def choice(self, index: int, text: str, finish_reason: str) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None, "finish_reason": finish_reason}
