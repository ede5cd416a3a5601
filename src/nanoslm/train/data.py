"""The run's tokens: the train and validation splits checked against the params, and the fixed validation windows.

Validation runs on one fixed set of windows (drawn once from the seed), so every evaluation, and every experiment
with the same seed and data, scores the very same tokens; its loss is in nats, and as estimated bits per byte
(the headline figure; see Validation.bits_per_byte).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import hardware
from ..batches import step_offsets, windows
from ..config import Params, TrainConfig
from ..errors import UserError
from ..model import GPT
from ..tokens import check_tokens, load_learn, load_split, read_meta


@dataclass(frozen=True)
class Split:
    """A split's tokens, and for fine-tuning which of them are targets to learn (None: all)."""

    tokens: np.ndarray
    learn: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def windows(self, offsets: np.ndarray, block_size: int, device: torch.device):
        """A batch for the model: (inputs, targets) or (inputs, targets, learn)."""
        return windows(self.tokens, offsets, block_size, device, self.learn)


def load_data(tokens_dir: Path, params: Params) -> tuple[dict, Split, Split]:
    """meta.json and the train and validation splits, checked against the params."""
    cfg, tc = params.model, params.train
    meta = read_meta(tokens_dir)
    check_tokens(tokens_dir, meta, params.tokenizer)  # model.vocab_size >= tokenizer.vocab_size: config's check
    splits = []
    for split in ("train", "validation"):
        tokens = load_split(tokens_dir, split, cfg.block_size)
        splits.append(Split(tokens, load_learn(tokens_dir, split, len(tokens))))
    train_data, val_data = splits
    windows_available = len(val_data) - cfg.block_size
    if tc.eval_iters * tc.batch_size > windows_available:
        raise UserError(f"train.eval_iters x train.batch_size = {tc.eval_iters * tc.batch_size} validation windows, "
                        f"but the validation split has only {windows_available} distinct windows of "
                        f"model.block_size tokens; lower train.eval_iters or use more validation stories")
    return meta, train_data, val_data


class Validation:
    """The fixed validation windows, drawn once from the seed: every evaluation scores the very same tokens."""

    def __init__(self, data: Split, tc: TrainConfig, block_size: int, hw: hardware.Hardware, split: dict):
        self.data, self.block_size, self.hw = data, block_size, hw
        self.offsets = step_offsets(np.random.default_rng(tc.seed + 1), data.tokens, tc.eval_iters, tc.batch_size,
                                    block_size)
        # meta.json's {"tokens", "bytes"} of the split: its targets per UTF-8 byte, as evaluate counts them (a
        # fine-tuning split counts only its learned targets, and the bytes of their text)
        targets = split.get("targets", split["tokens"] - 1)
        self._targets_per_byte = targets / split["bytes"] if split["bytes"] else math.nan

    def bits_per_byte(self, loss: float) -> float:
        """An estimate of the split's bits per byte from the windows' mean loss (nats per token): the loss in bits
        times the whole split's tokens per byte. The evaluate stage's bits_per_byte is the exact whole-split one."""
        return loss / math.log(2) * self._targets_per_byte

    def loss(self, forward, model: GPT) -> float:
        """Mean loss over the windows, through `forward` (the model, maybe compiled) in eval mode."""
        model.eval()
        with torch.no_grad(), self.hw.autocast():
            losses = [forward(*self.data.windows(o, self.block_size, self.hw.device)).item() for o in self.offsets]
        model.train()
        return float(np.mean(losses))
