"""`nanoslm chat`: type the start of a story, the model continues it, streaming; /commands change the settings."""

import dataclasses
import sys
from typing import Callable, Optional

import tiktoken
import torch

from .config import ConfigError, Sampling
from .engine import Engine
from .generate import stream_text

HELP = """\
Type the start of a story and press Enter: the model continues it. An empty line starts a story from nothing.
  /temp X     temperature (0 = greedy)          /topk N|off   sample among the N most likely tokens
  /topp X     nucleus: 0 < X <= 1 (1 = off)     /max N        at most N new tokens per story
  /seed N     restart the random numbers        /settings     show the settings
  /help       this text                         /quit         leave (so do Ctrl-D, and Ctrl-C at the prompt)
Ctrl-C while a story is being written stops that story."""

# command -> (Sampling field, how to read the value)
SETTINGS = {"/temp": ("temperature", float), "/topk": ("top_k", lambda v: None if v == "off" else int(v)),
            "/topp": ("top_p", float), "/max": ("max_new_tokens", int)}


def describe(sampling: Sampling, seed: int) -> str:
    top_k = "off" if sampling.top_k is None else sampling.top_k
    return (f"temperature {sampling.temperature}, top-k {top_k}, top-p {sampling.top_p}, "
            f"at most {sampling.max_new_tokens} new tokens, seed {seed}")


class Chat:
    """The loop's state: settings and one random generator that runs on from story to story (so a session
    with the same seed and the same lines writes the same stories)."""

    def __init__(self, engine: Engine, enc: tiktoken.Encoding, sampling: Sampling, seed: int, out=None):
        self.engine, self.enc, self.out = engine, enc, out or sys.stdout
        self.sampling = sampling.check(engine.model.config.vocab_size)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed, self.generator = seed, torch.Generator().manual_seed(seed)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def run(self, read: Callable[[str], str] = input) -> None:
        """Read lines until /quit, end of input (Ctrl-D) or Ctrl-C at the prompt."""
        self.say(f"Nano-SLM story chat ({describe(self.sampling, self.seed)}). /help for commands.")
        while True:
            try:
                line = read("> ")
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            if line.strip().startswith("/"):
                if self.command(line.strip()) == "quit":
                    return
            else:
                self.story(line)

    def story(self, prompt: str) -> None:
        """Continue `prompt`, streaming; Ctrl-C stops this story only."""
        try:
            for piece in stream_text(self.engine, self.enc, prompt, self.sampling, self.generator):
                self.say(piece, end="")
        except KeyboardInterrupt:
            self.say(" [stopped]", end="")
        self.say("\n")

    def command(self, line: str) -> Optional[str]:
        """Apply one /command; a mistake prints one `error:` line and changes nothing."""
        name, _, value = line.partition(" ")
        value = value.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            self.say(HELP)
        elif name == "/settings":
            self.say(describe(self.sampling, self.seed))
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
