"""`nanoslm evaluate --data FILE`: score a checkpoint on a .txt in the hub's layout, tokenized as the pipeline does.

The CLI's, not a stage's: it tokenizes with the writer (nanoslm.tokenization), which the evaluate stage must not
depend on.
"""

import tempfile
from pathlib import Path

import numpy as np

from . import checkpoint, hardware
from .evaluate import score
from .tokenization import tokenize_split
from .tokenizer import encoding_for
from .tokens import DTYPE


def evaluate_text_file(checkpoint_path, data_file, batch_size: int, hw: hardware.Hardware) -> dict:
    """Metrics of a checkpoint on a .txt in the hub's layout, tokenized as the pipeline's .bin files are."""
    model, state = checkpoint.load_model(checkpoint_path, hw.device)
    with tempfile.TemporaryDirectory(prefix="nanoslm-eval-") as tmp:
        bin_path = Path(tmp) / "data.bin"
        enc = encoding_for(state["tokenizer"], source=checkpoint_path)
        stats = tokenize_split(data_file, bin_path, enc, 1024, 0)
        tokens = np.fromfile(bin_path, dtype=DTYPE)
    return score(model, state, tokens, stats["bytes"], batch_size, hw)
