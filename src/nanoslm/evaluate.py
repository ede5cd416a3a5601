"""The evaluate stage: score every token of a split exactly once, deterministically.

The split is cut into consecutive windows of block_size tokens; each window predicts its next
tokens, so token i (for i >= 1) is scored once, with up to block_size tokens of context.
"""

import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, hardware
from .batches import windows
from .errors import UserError
from .model import GPT
from .tokenizer import label, vocab_size_of
from .tokens import load_split, read_meta


def split_nll(model: GPT, tokens: np.ndarray, batch_size: int, hw: hardware.Hardware) -> float:
    """Sum of next-token negative log-likelihoods (nats) over every token but the first."""
    T = model.config.block_size
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise UserError("the evaluation data holds fewer than 2 tokens; give it at least one story")
    if hw.device_type == "cpu":
        hardware.keep_freed_memory()  # as in training: big per-batch buffers stay mapped (docs/experiments.md, 2026-11-21)
    starts = np.arange(0, n_targets, T)
    full, tail = starts[starts + T <= n_targets], starts[starts + T > n_targets]
    total = 0.0
    model.eval()
    with torch.no_grad(), hw.autocast(), tqdm(total=n_targets, desc="evaluate", unit="tok", unit_scale=True,
                                               file=sys.stderr) as bar:
        for i in range(0, len(full), batch_size):
            offsets = full[i : i + batch_size]
            x, y = windows(tokens, offsets, T, hw.device)
            total += model(x, y, reduction="sum").item()
            bar.update(y.numel())
        for start in tail:  # the last, shorter window
            row = torch.from_numpy(tokens[start:].astype(np.int64))[None].to(hw.device)
            total += model(row[:, :-1], row[:, 1:], reduction="sum").item()
            bar.update(row.size(1) - 1)
    return total


def metrics(nll: float, tokens: int, text_bytes: int) -> dict:
    """val_loss in nats/token; bits per byte over the stories' UTF-8 bytes (tokenizer-independent)."""
    loss = nll / tokens
    return {
        "val_loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nll / math.log(2) / text_bytes,
        "tokens": tokens,
        "bytes": text_bytes,
    }


def evaluate_checkpoint(checkpoint_path, tokens_dir, batch_size: int, hw: hardware.Hardware,
                        split: str = "validation") -> dict:
    """Metrics of a checkpoint on one split of the pipeline's tokens."""
    model, state = checkpoint.load_model(checkpoint_path, hw.device)
    meta = read_meta(tokens_dir)
    if state["tokenizer"] != meta["tokenizer"]:
        raise UserError(f"{checkpoint_path}: trained with tokenizer {label(state['tokenizer'])!r} "
                        f"({vocab_size_of(state['tokenizer'])} ids) but {tokens_dir} holds tokens of "
                        f"{label(meta['tokenizer'])!r} ({vocab_size_of(meta['tokenizer'])} ids); rerun: dvc repro")
    tokens = load_split(tokens_dir, split)
    return score(model, state, tokens, meta["splits"][split]["bytes"], batch_size, hw)


def score(model: GPT, state: dict, tokens: np.ndarray, text_bytes: int, batch_size: int,
           hw: hardware.Hardware) -> dict:
    """metrics() plus the checkpoint's step and the vocabulary the numbers belong to (bits_per_byte compares across
    vocabularies; val_loss and perplexity are per token, so only within one)."""
    return {**metrics(split_nll(model, tokens, batch_size, hw), len(tokens) - 1, text_bytes), "step": state["step"],
            "tokenizer": label(state["tokenizer"]), "vocab_size": vocab_size_of(state["tokenizer"])}
