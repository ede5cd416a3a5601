"""A chat checkpoint's side of `nanoslm chat`: which turns of the conversation the model reads, and its reply as
text. The conversation is kept as messages ({"role", "content"}, nanoslm.conversation's) and rendered whole for each
request, so the model reads exactly what the server and the exported chat template would give it."""

from typing import Iterator

import tiktoken
import torch

from .config import Sampling
from .conversation import ChatTokens, render
from .engine import Engine
from .generate import TextStream


def window(messages: list[dict], enc: tiktoken.Encoding, chat: ChatTokens, block_size: int,
           budget: int) -> tuple[list[dict], list[int]]:
    """The messages the model reads and their ids (rendered for a reply): the oldest user+assistant pairs are
    dropped while the ids and `budget` new tokens do not fit block_size tokens. A leading system message and the
    last request always stay, so the result may still be too long (the caller decides what that means).

    `messages` is an optional system message, then user and assistant turns alternating, ending with a user turn.
    """
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head):]
    while True:
        kept = head + turns
        ids = render(kept, enc, chat, reply=True)[0]
        if len(ids) + budget <= block_size or len(turns) <= 1:
            return kept, ids
        turns = turns[2:]  # a whole pair: a reply without its request would read as the model's own words


def stream_reply(engine: Engine, enc: tiktoken.Encoding, chat: ChatTokens, ids: list[int], sampling: Sampling,
                 generator: torch.Generator) -> Iterator[str]:
    """The reply to the conversation `ids`, piece by piece as the tokens are made. The engine ends it at <|end|>
    (or <|endoftext|>); a role marker it writes on the way is shown as the marker's text, as
    nanoslm.conversation.decode shows it, since plain text cannot hold it."""
    text, markers = TextStream(enc), chat.texts()
    for (token,) in engine.stream([ids], sampling, [generator]):
        piece = text.flush() + markers[token] if token in markers else text.push(token)
        if piece:
            yield piece
    rest = text.flush()
    if rest:
        yield rest
