"""What survives a restart: the model, optimizers, GradScaler, every RNG, the loop's progress and the partly summed
loss of the current log window, saved together in models/last.pt and loaded back only into the same run.

A run killed at any point and started again continues from last.pt and ends bit-for-bit where an uninterrupted run
ends (on CPU). Knows nothing of the loop's order or of logging; the loop calls save() and resume().
"""

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint, distributed, hardware
from ..config import Params
from ..model import GPT
from .step import make_optimizers, make_scaler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fingerprint(params: Params, meta: dict, hw: hardware.Hardware, world_size: int, init: dict | None) -> dict:
    """What a resumed run must share with the checkpoint for the result to be the same run's."""
    train = dataclasses.asdict(params.train)
    train.pop("checkpoint_interval")  # decides only when state is saved
    start = {"init": init["fingerprint"]} if init else {}  # fine-tuning: the checkpoint it started from
    return {
        **start,
        "model": dataclasses.asdict(params.model),
        "train": train,
        "dtype": str(hw.dtype).removeprefix("torch."),
        "processes": world_size,
        "data": {"tokenizer": meta["tokenizer"], "splits": meta["splits"]},
    }


@dataclasses.dataclass
class Progress:
    """The loop's own state besides model, optimizer and RNGs; saved in last.pt."""

    step: int = 0
    best_val: float = float("inf")
    train_points: list = dataclasses.field(default_factory=list)  # [(step, loss)]
    val_points: list = dataclasses.field(default_factory=list)
    window_steps: int = 0  # steps in the current log window (each rank's loss sum is in its rank state)


class TrainState:
    """Everything that decides the rest of a run: model, optimizers, GradScaler, progress and this rank's loss
    window (the RNGs are global; the batches depend on the step alone). save() writes it all to last.pt; resume()
    reads it all back."""

    def __init__(self, params: Params, meta: dict, hw: hardware.Hardware, ranks: distributed.Ranks,
                 init: dict | None = None):
        """init (fine-tuning): {"model": a state dict to start from, "fingerprint": what identifies it}."""
        self.hw, self.ranks, self.tokenizer = hw, ranks, meta["tokenizer"]
        # a chat vocabulary's ids go into every checkpoint, so its readers render conversations alike
        self.format = {"chat": meta["chat"]} if meta.get("chat") else {}
        self.fingerprint = fingerprint(params, meta, hw, ranks.world_size, init)
        self.model = GPT(params.model).to(hw.device)
        if init:
            self.model.load_state_dict(init["model"])
        self.optimizers = make_optimizers(self.model, params.train, hw)
        self.scaler = make_scaler(hw)
        self.progress = Progress()
        # this rank's loss summed over the current log window: one tensor, continued across a resume so the
        # logged mean is bit-identical to an uninterrupted run's (and no per-step device sync)
        self.window_loss = torch.zeros((), device=hw.device)
        self.saved_step: int | None = None  # the step last.pt holds, as this run wrote or read it

    def add_window_loss(self, loss: torch.Tensor) -> None:
        """Count one optimizer step's mean loss into the log window."""
        self.window_loss += loss
        self.progress.window_steps += 1

    def end_log_window(self) -> float:
        """The mean train loss over the log window's steps and ranks; starts the next window."""
        loss = distributed.mean(self.window_loss, self.ranks).item() / self.progress.window_steps
        self.window_loss.zero_()
        self.progress.window_steps = 0
        return loss

    def add_val_point(self, step: int, val: float, best_path: Path) -> None:
        """Record a validation loss; a new best one saves the model to best_path."""
        self.progress.val_points.append((step, val))
        if val < self.progress.best_val:
            self.progress.best_val = val
            checkpoint.save(best_path, self.model, step=step, val_loss=val, tokenizer=self.tokenizer, **self.format)

    def save(self, path: Path) -> None:
        """Write last.pt, unless it holds this very step already. A collective: every rank calls it (each rank's
        RNGs and loss window go in)."""
        p = self.progress
        if self.saved_step == p.step:
            return
        rank_states = distributed.gather(self._rank_state(), self.ranks)
        if self.ranks.is_main:
            checkpoint.save(path, self.model, step=p.step, val_loss=p.val_points[-1][1], tokenizer=self.tokenizer,
                            **self.format, training={"fingerprint": self.fingerprint, "optimizers": [o.state_dict() for o in self.optimizers],
                                      "scaler": self.scaler.state_dict(), "ranks": rank_states,
                                      "progress": dataclasses.asdict(p)})
        self.saved_step = p.step

    def resume(self, path: Path, max_iters: int, say) -> bool:
        """Load path's training state when it belongs to this run and is unfinished; True when it did.

        A damaged file (truncated, garbage) is moved aside to path.damaged, and the run starts fresh.
        """
        if not path.exists():
            return False
        try:
            state = checkpoint.load(path, map_location=self.hw.device)
        except checkpoint.DamagedCheckpoint as err:
            aside = path.with_name(path.name + ".damaged")
            if self.ranks.is_main:  # the other ranks find it damaged or gone: they start fresh too
                os.replace(path, aside)
            say(f"{err}; moved it to {aside} and starting fresh")
            return False
        training = state.get("training")
        if training is None:
            say(f"{path}: holds no training state; starting fresh")
            return False
        if training["fingerprint"] != self.fingerprint:
            say(f"{path}: params changed since it was saved ({_changes(training['fingerprint'], self.fingerprint)}); "
                f"starting fresh")
            return False
        if state["step"] >= max_iters:
            say(f"{path}: that run finished (step {state['step']}); starting fresh")
            return False
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, training["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.scaler.load_state_dict(training["scaler"])
        self._restore_rank_state(training["ranks"][self.ranks.rank])
        p = self.progress = Progress(**training["progress"])
        p.train_points, p.val_points = [tuple(x) for x in p.train_points], [tuple(x) for x in p.val_points]
        self.saved_step = p.step
        say(f"resuming from {path} at step {p.step} of {max_iters}")
        return True

    def _rank_state(self) -> dict:
        """What differs between ranks: the RNGs, and the loss summed so far in the log window."""
        legacy = np.random.get_state()
        return {
            "window_loss": self.window_loss.item(),
            "python": random.getstate(),
            "numpy": (legacy[0], legacy[1].tolist(), *legacy[2:]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.hw.device) if self.hw.device_type == "cuda" else None,
        }

    def _restore_rank_state(self, state: dict) -> None:
        self.window_loss.fill_(state["window_loss"])  # float32 -> Python float -> float32 is exact
        random.setstate(state["python"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] is not None and self.hw.device_type == "cuda":
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.hw.device)


def _changes(old: dict, new: dict, prefix: str = "") -> str:
    """The first few differing leaves, e.g. 'model.n_layer: 2 -> 4'."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [d for d in _changes(a, b, f"{prefix}{key}.").split(", ") if d]
        elif a != b:
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return ", ".join(diffs[:4])
