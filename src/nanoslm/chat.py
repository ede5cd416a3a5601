"""`nanoslm chat`: on a base checkpoint, type the start of a story and the model continues it; on a chat
(instruction-tuned) checkpoint, type a request and the model writes the story, in a conversation that goes on until
/new. Either way the text streams, and /commands change the settings."""

import dataclasses
import sys
from typing import Callable, Optional

import tiktoken
import torch

from .config import ConfigError, Sampling
from .conversation import ChatTokens
from .engine import Engine
from .generate import stream_text
from .turns import stream_reply, window

SETTINGS_HELP = """\
  /temp X     temperature (0 = greedy)          /topk N|off   sample among the N most likely tokens
  /topp X     nucleus: 0 < X <= 1 (1 = off)     /max N        at most N new tokens per {text}
  /seed N     restart the random numbers        /settings     show the settings
  /help       this text                         /quit         leave (so do Ctrl-D, and Ctrl-C at the prompt)
Ctrl-C while a {text} is being written stops that {text}."""
CONTINUE_HELP = ("Type the start of a story and press Enter: the model continues it. An empty line starts a story "
                 "from nothing.\n" + SETTINGS_HELP.format(text="story"))
REQUEST_HELP = ("Type a request (\"a story about a dog who finds a red ball\") and press Enter: the model writes it.\n"
                "The conversation goes on, its oldest turns dropped once it outgrows the model's context.\n"
                "  /new        start a new conversation          /system TEXT  a system message (alone: none)\n"
                + SETTINGS_HELP.format(text="reply"))

# command -> (Sampling field, how to read the value)
SETTINGS = {"/temp": ("temperature", float), "/topk": ("top_k", lambda v: None if v == "off" else int(v)),
            "/topp": ("top_p", float), "/max": ("max_new_tokens", int)}


def describe(sampling: Sampling, seed: int) -> str:
    top_k = "off" if sampling.top_k is None else sampling.top_k
    return (f"temperature {sampling.temperature}, top-k {top_k}, top-p {sampling.top_p}, "
            f"at most {sampling.max_new_tokens} new tokens, seed {seed}")


class Chat:
    """The loop's state: settings, one random generator that runs on from reply to reply (so a session with the
    same seed and the same lines writes the same stories), and with a chat checkpoint (`chat`, its role ids) the
    conversation: a system message, which stays until /system changes it, and the turns since /new."""

    def __init__(self, engine: Engine, enc: tiktoken.Encoding, sampling: Sampling, seed: int,
                 chat: Optional[ChatTokens] = None, out=None):
        self.engine, self.enc, self.chat, self.out = engine, enc, chat, out or sys.stdout
        self.sampling = sampling.check(engine.model.config.vocab_size)
        self.reseed(seed)
        self.system: Optional[str] = None
        self.turns: list[dict] = []
        self.told_dropping = False  # the notice that old turns go is said once a session

    def reseed(self, seed: int) -> None:
        self.seed, self.generator = seed, torch.Generator().manual_seed(seed)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def run(self, read: Callable[[str], str] = input) -> None:
        """Read lines until /quit, end of input (Ctrl-D) or Ctrl-C at the prompt."""
        mode = "requests" if self.chat else "story continuation"
        self.say(f"Nano-SLM story chat, {mode} mode ({describe(self.sampling, self.seed)}). /help for commands.")
        while True:
            try:
                line = read("> ")
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            if line.strip().startswith("/"):
                if self.command(line.strip()) == "quit":
                    return
            elif self.chat:
                self.request(line)
            else:
                self.show(stream_text(self.engine, self.enc, line, self.sampling, self.generator))

    def show(self, pieces) -> str:
        """Print the text as it comes, then a blank line; Ctrl-C stops it. The text printed, for the record."""
        shown = []
        try:
            for piece in pieces:
                shown.append(piece)
                self.say(piece, end="")
        except KeyboardInterrupt:
            self.say(" [stopped]", end="")
        self.say("\n")
        return "".join(shown)

    def request(self, line: str) -> None:
        """Answer one request in the conversation so far, dropping its oldest turns if they no longer fit."""
        if not line.strip():
            return  # a request needs words: the model was tuned on none without
        head = [{"role": "system", "content": self.system}] if self.system else []
        messages = head + self.turns + [{"role": "user", "content": line}]
        block, budget = self.engine.block_size, self.sampling.max_new_tokens
        kept, ids = window(messages, self.enc, self.chat, block, budget)
        if len(ids) > block:
            self.say(f"error: this request needs {len(ids)} tokens{' with the system message' if head else ''}, "
                     f"more than the model's context of {block}; shorten it")
            return
        if len(kept) < len(messages) and not self.told_dropping:
            self.say(f"(the oldest turns are left out from here on, to fit the conversation and a reply of up to "
                     f"{budget} tokens in the model's context of {block}; /max N for shorter replies, /new to restart)")
            self.told_dropping = True
        reply = self.show(stream_reply(self.engine, self.enc, self.chat, ids, self.sampling, self.generator))
        self.turns = kept[len(head):] + [{"role": "assistant", "content": reply}]

    def command(self, line: str) -> Optional[str]:
        """Apply one /command; a mistake prints one `error:` line and changes nothing."""
        name, _, value = line.partition(" ")
        value = value.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            self.say(REQUEST_HELP if self.chat else CONTINUE_HELP)
        elif name == "/settings":
            self.say(describe(self.sampling, self.seed))
        elif name in ("/new", "/system") and not self.chat:
            self.say(f"error: {name} is for a checkpoint tuned on conversations; this one continues stories")
        elif name == "/new":
            self.turns = []
            self.say("(a new conversation)")
        elif name == "/system":
            self.system = value or None
            self.say(f"(system message: {value})" if value else "(no system message)")
        elif name == "/seed":
            try:
                self.reseed(int(value))
            except ValueError:
                self.say(f"error: /seed needs an integer, got {value!r}")
                return None
            self.say(describe(self.sampling, self.seed))
        elif name in SETTINGS:
            field, parse = SETTINGS[name]
            try:
                changed = dataclasses.replace(self.sampling, **{field: parse(value)})
                self.sampling = changed.check(self.engine.model.config.vocab_size)
            except ValueError:
                self.say(f"error: {name} needs a number{' or off' if name == '/topk' else ''}, got {value!r}")
                return None
            except ConfigError as err:  # the range of a setting: named as the command that sets it
                self.say(f"error: {name} {err.problem}")
                return None
            self.say(describe(self.sampling, self.seed))
        else:
            self.say(f"error: unknown command {name}; /help lists them")
        return None
