"""Text in, stories out: the sample stage's Markdown file and the CLI's streamed stories, on nanoslm.engine."""

import codecs
import sys
from pathlib import Path
from typing import Iterator

import tiktoken
import torch
from tqdm import tqdm

from . import checkpoint, hardware
from .atomic import write_text
from .config import SampleConfig, Sampling
from .conversation import ChatTokens, decode, render
from .engine import Engine, collect, generators
from .model import GPT
from .tokenizer import encoding_for


def load_engine(checkpoint_path, hw: hardware.Hardware) -> tuple[Engine, tiktoken.Encoding, dict]:
    """An Engine on the checkpoint's model, its tokenizer, and the checkpoint's metadata (see engine_for)."""
    model, state = checkpoint.load_model(checkpoint_path, hw.device)
    enc = encoding_for(state["tokenizer"], source=checkpoint_path)
    return engine_for(model, state, enc, hw), enc, state


def engine_for(model: GPT, state: dict, enc: tiktoken.Encoding, hw: hardware.Hardware) -> Engine:
    """An Engine on a checkpoint's model. A chat checkpoint's engine may pick the chat ids, and a row ends at
    <|end|> (a reply's end, nanoslm.conversation) as at <|endoftext|> (a story's)."""
    if "chat" in state:
        chat = ChatTokens(**state["chat"])
        return Engine(model, hw, eot=enc.eot_token, n_vocab=chat.vocab_size, end=chat.end)
    return Engine(model, hw, eot=enc.eot_token, n_vocab=enc.n_vocab)


def sample_prompts(checkpoint_path, cfg: SampleConfig, hw: hardware.Hardware) -> tuple[list[dict], dict]:
    """One continuation per prompt, then (from a chat checkpoint) one answer per request, and the checkpoint's
    metadata.

    The prompts run as one batch, the requests as another; prompt (or request) i samples with seed cfg.seed + i,
    so adding one changes no other sample. A checkpoint that knows no conversations answers no request.
    """
    engine, enc, state = load_engine(checkpoint_path, hw)
    chat = ChatTokens(**state["chat"]) if "chat" in state else None
    batches = [("prompt", cfg.prompts, [enc.encode_ordinary(p) for p in cfg.prompts])]
    if chat and cfg.requests:
        asked = [render([{"role": "user", "content": r}], enc, chat, reply=True)[0] for r in cfg.requests]
        batches.append(("request", cfg.requests, asked))
    samples = []
    for kind, texts, prompts in batches:
        steps = engine.stream(prompts, cfg, generators(cfg.seed, len(prompts)))  # a SampleConfig is a Sampling
        bar = tqdm(steps, desc=f"sample {kind}s", unit="token", total=cfg.max_new_tokens, file=sys.stderr)
        new = collect(bar, len(prompts))
        samples += [{kind: t, "text": decode(ids, enc, chat) if chat else enc.decode(ids)} for t, ids in zip(texts, new)]
    return samples, state


def write_samples(checkpoint_path, cfg: SampleConfig, hw: hardware.Hardware, out_path) -> list[dict]:
    """Sample every prompt (and request) and write them as Markdown (git-tracked, so experiments can be diffed)."""
    samples, state = sample_prompts(checkpoint_path, cfg, hw)
    top_k = "off" if cfg.top_k is None else cfg.top_k
    top_p = "off" if cfg.top_p == 1 else cfg.top_p
    lines = [
        "# Samples",
        "",
        f"Checkpoint `{Path(checkpoint_path).as_posix()}` (step {state['step']}, val loss {state['val_loss']:.4f}); "
        f"temperature {cfg.temperature}, top-k {top_k}, top-p {top_p}, seed {cfg.seed}, "
        f"at most {cfg.max_new_tokens} new tokens.",
    ]
    for s in samples:
        if "prompt" in s:
            lines += ["", f"## {s['prompt']}", "", f"**{s['prompt']}**{s['text']}"]
        else:
            lines += ["", f"## Request: {s['request']}", "", s["text"].strip()]
    if cfg.requests and "chat" not in state:
        lines += ["", "(No answers to sample.requests: this checkpoint was not trained on conversations.)"]
    write_text(out_path, "\n".join(lines) + "\n")
    return samples


class TextStream:
    """Turns tokens into text as they come, printing each character once and only when it is whole.

    A character's UTF-8 bytes can be split across tokens, so the bytes go through an incremental UTF-8 decoder
    that holds an incomplete character back until the next token completes it (linear in the text's length,
    where decoding everything so far at each token would be quadratic).
    """

    def __init__(self, enc: tiktoken.Encoding):
        self.enc, self.utf8 = enc, codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text that `token` completes (maybe '')."""
        return self.utf8.decode(self.enc.decode_single_token_bytes(token))

    def flush(self) -> str:
        """Whatever is held back (a genuinely incomplete character at the end reads as U+FFFD)."""
        return self.utf8.decode(b"", final=True)


def stream_text(engine: Engine, enc: tiktoken.Encoding, prompt: str, sampling: Sampling,
                generator: torch.Generator) -> Iterator[str]:
    """The continuation of `prompt`, piece by piece as the tokens are made."""
    text = TextStream(enc)
    for (token,) in engine.stream([enc.encode_ordinary(prompt)], sampling, [generator]):
        piece = text.push(token)
        if piece:
            yield piece
    rest = text.flush()
    if rest:
        yield rest
