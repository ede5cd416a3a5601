"""Conversations as token ids: role markers no text can produce, and the one renderer that training, chat, the
server and export share.

A chat vocabulary is a base vocabulary (meta.json's "tokenizer") with four ids appended after its last one:
<|system|>, <|user|> and <|assistant|> open a turn, <|end|> closes it. Messages' text is encoded as plain text
(tiktoken's encode_ordinary), so a user who types "<|user|>" gets the ids of those characters, never a marker.
A conversation renders as <|endoftext|>, then each turn as marker, text, <|end|>; the assistant's text and its
<|end|> are what fine-tuning learns. Knows nothing of models or files beyond reading a JSON Lines source.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from .errors import UserError, brief

ROLES = ("system", "user", "assistant")
MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>"}


@dataclass(frozen=True)
class ChatTokens:
    """The four ids a chat vocabulary adds after a base vocabulary of n_vocab ids."""

    system: int
    user: int
    assistant: int
    end: int

    @classmethod
    def after(cls, n_vocab: int) -> "ChatTokens":
        return cls(system=n_vocab, user=n_vocab + 1, assistant=n_vocab + 2, end=n_vocab + 3)

    @property
    def vocab_size(self) -> int:
        """Ids in the chat vocabulary: the base's and these four."""
        return self.end + 1

    @property
    def roles(self) -> frozenset[int]:
        """The ids that begin a turn (system, user, assistant), as opposed to the one that ends it."""
        return frozenset({self.system, self.user, self.assistant})

    def texts(self) -> dict[int, str]:
        """Each marker's id and its text, for decoding and for export."""
        return {getattr(self, name): text for name, text in MARKERS.items()}


def decode(ids: list[int], enc: tiktoken.Encoding, tokens: ChatTokens) -> str:
    """Text of ids that may hold chat ids (written as their markers' text)."""
    texts, out, run = tokens.texts(), [], []
    for i in ids:
        if i in texts:
            out += [enc.decode(run), texts[i]]
            run = []
        else:
            run.append(i)
    return "".join(out) + enc.decode(run)


def render(messages: list[dict], enc: tiktoken.Encoding, tokens: ChatTokens,
           reply: bool = False) -> tuple[list[int], list[bool]]:
    """A conversation's ids, and for each id whether it is learned as a target (the assistant's text and <|end|>).

    reply=True appends <|assistant|> so that the model's next tokens are the assistant's answer (chat, the API).
    """
    ids, learn = [enc.eot_token], [False]
    for message in messages:
        role = message["role"]
        body = enc.encode_ordinary(message["content"])
        ids += [getattr(tokens, role), *body, tokens.end]
        learn += [False] + [role == "assistant"] * (len(body) + 1)
    if reply:
        ids.append(tokens.assistant)
        learn.append(False)
    return ids, learn


def check_messages(messages, where: str) -> list[dict]:
    """The messages of one conversation, as {"role", "content"}; a one-line UserError naming `where` otherwise."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict):
            raise UserError(f"{at} is not an object with \"role\" and \"content\"")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"{at}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"{at}: \"content\" must be a string, got {type(content).__name__}")
        if not content.strip():
            raise UserError(f"{at}: \"content\" is empty; give the {role}'s text or drop the message")
        checked.append({"role": role, "content": content})
    return checked


def read_jsonl(path, enc: tiktoken.Encoding, tokens: ChatTokens, context: int) -> list[list[dict]]:
    """The conversations of a JSON Lines file in OpenAI's fine-tuning format ({"messages": [...]} a line).

    Every way a line can be unusable is a one-line UserError naming the file and line: not JSON, no messages, an
    unknown role, content that is not a string or is empty, no assistant turn to learn, or a conversation longer
    than the model's context (`context` tokens, with the next-token target). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; give finetune.source a .jsonl file (or a .txt of plain text)")
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as err:
                raise UserError(f"{where}: not valid JSON ({brief(err)}); each line must be one "
                                f"{{\"messages\": [...]}} object") from None
            if not isinstance(record, dict) or "messages" not in record:
                raise UserError(f"{where}: expected an object with \"messages\", as OpenAI's fine-tuning format")
            messages = check_messages(record["messages"], where)
            if not any(m["role"] == "assistant" for m in messages):
                raise UserError(f"{where}: no assistant message, so nothing to learn; add the answer as "
                                f"{{\"role\": \"assistant\", \"content\": ...}}")
            length = len(render(messages, enc, tokens)[0])
            if length > context + 1:
                raise UserError(f"{where}: the conversation is {length} tokens, longer than the model's context of "
                                f"{context}; shorten or split it")
            conversations.append(messages)
    if not conversations:
        raise UserError(f"{path}: holds no conversations")
    return conversations
