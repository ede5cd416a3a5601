"""What a run reports: dvclive curves and metrics.json, the progress bar, messages, and the training throughput.

Only the main rank writes; on resume the curves so far are written again from the checkpoint's history, so they
continue exactly (points logged after that checkpoint are not kept). Knows nothing of the model or the optimizers.
"""

import math
import sys
import time
from contextlib import contextmanager

from tqdm import tqdm

from .. import distributed
from .data import Validation
from .state import Progress


def printer(ranks: distributed.Ranks):
    """A say(message) that prints to stderr on the main rank only."""
    def say(message: str) -> None:
        if ranks.is_main:
            print(message, file=sys.stderr)
    return say


class RunLog:
    """dvclive (main rank only) and the progress bar, fed by the loop at each evaluation and log interval."""

    def __init__(self, live_dir, progress: Progress, validation: Validation, max_iters: int,
                 ranks: distributed.Ranks):
        self.validation = validation
        self.live = _live(live_dir, progress, validation) if ranks.is_main else None
        self.bar = tqdm(total=max_iters, initial=progress.step, desc="train", unit="step", file=sys.stderr,
                        disable=not ranks.is_main)

    def val(self, step: int, loss: float) -> None:
        bpb = self.validation.bits_per_byte(loss)
        _log(self.live, step, _val_curves(loss, bpb))
        self.bar.set_postfix(val=f"{loss:.3f}", val_bpb=f"{bpb:.3f}", refresh=False)

    def train(self, step: int, loss: float, best_val: float, lr: float, tokens: int, tokens_per_sec: float) -> None:
        _log(self.live, step, {"train/loss": loss}, {"lr": lr, "tokens": tokens, "tokens_per_sec": tokens_per_sec})
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}", val=f"{best_val:.3f}",
                             val_bpb=f"{self.validation.bits_per_byte(best_val):.3f}")

    def close(self) -> None:
        self.bar.close()
        if self.live is not None:
            self.live.end()


class Clock:
    """Seconds of training in the current log window: time spent evaluating and saving is not throughput."""

    def __init__(self):
        self.start = time.perf_counter()

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began

    def lap(self) -> float:
        """Seconds since the window began; the next window begins now."""
        now = time.perf_counter()
        seconds, self.start = now - self.start, now
        return seconds


def _live(live_dir, progress: Progress, validation: Validation):
    from dvclive import Live  # slow import; only the train stage needs it

    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    history: dict[int, dict] = {}
    for step, loss in progress.train_points:
        history.setdefault(step, {})["train/loss"] = loss
    for step, loss in progress.val_points:
        history.setdefault(step, {})["val/loss"] = loss
    for step in sorted(history):
        curves = history[step]
        if "val/loss" in curves:
            curves = {**curves, **_val_curves(curves["val/loss"], validation.bits_per_byte(curves["val/loss"]))}
        _log(live, step, curves)
    return live


def _val_curves(loss: float, bpb: float) -> dict:
    """The validation curves of one evaluation: loss, and bits per byte (comparable across vocabularies)."""
    return {"val/loss": loss} if math.isnan(bpb) else {"val/loss": loss, "val/bpb": bpb}  # NaN: a split of no bytes


def _log(live, step: int, curves: dict, summary_only: dict | None = None) -> None:
    if live is None:
        return
    live.step = step
    for name, value in curves.items():
        live.log_metric(name, value)
    for name, value in (summary_only or {}).items():  # metrics.json only: dvc.yaml declares no plot for these
        live.log_metric(name, value, plot=False)
    live.next_step()
