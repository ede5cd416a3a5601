"""Training: the loop (loop.py) and its parts. train() is what the train stage calls; bench times the very same
optimizer step through the names below."""

from .loop import train
from .step import lr_at, lrs_at, make_optimizers, make_scaler, maybe_compile, optimizer_step

__all__ = ["train", "lr_at", "lrs_at", "make_optimizers", "make_scaler", "maybe_compile", "optimizer_step"]
