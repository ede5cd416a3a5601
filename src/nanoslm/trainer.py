"""The train stage: AdamW (or Muon for the blocks' matrices) on windows of the train tokens (drawn without
replacement by default: batches.Passes), with a linear warmup and a cosine or warmup-stable-decay (wsd) schedule.

Validation runs on one fixed set of windows (drawn once from the seed), so every evaluation, and
every experiment with the same seed and data, scores the very same tokens; its loss is logged in nats
(val/loss) and as estimated bits per byte (val/bpb, the headline figure; see Validation.bits_per_byte).

Resumable exactly: models/last.pt holds everything that decides the rest of the run (weights,
optimizers, GradScaler, every RNG, the partly summed loss of the current log
window, the best validation loss and the logged history). A run killed at any point and started
again continues from it and ends bit-for-bit where an uninterrupted run ends (on CPU).
"""

import dataclasses
import math
import os
import random
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import bins, checkpoint, distributed, faults, hardware
from .batches import step_offsets, train_windows, windows
from .config import Params, TrainConfig, cpu_threads
from .errors import UserError, brief
from .model import GPT
from .plotting import plot_loss
from .tokenizer import check_tokens


def lr_at(step: int, tc: TrainConfig, peak: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based) on train.schedule, for the optimizer whose peak is `peak`
    (default train.lr; its end is min_lr scaled alike): a linear warmup, then

    - cosine: a cosine decay from the peak to the end at lr_decay_iters;
    - wsd: flat at the peak, then a linear decay to the end over the last decay_frac of lr_decay_iters;

    and flat at the end afterwards.
    """
    lr, min_lr = (tc.lr, tc.min_lr) if peak is None else (peak, tc.min_lr * peak / tc.lr)
    if step < tc.warmup_iters:
        return lr * (step + 1) / (tc.warmup_iters + 1)
    if step >= tc.lr_decay_iters:
        return min_lr
    if tc.schedule == "wsd":
        decay_start = max(tc.warmup_iters, tc.lr_decay_iters - round(tc.decay_frac * tc.lr_decay_iters))
        if step < decay_start:
            return lr
        return lr + (step - decay_start) / (tc.lr_decay_iters - decay_start) * (min_lr - lr)
    progress = (step - tc.warmup_iters) / max(1, tc.lr_decay_iters - tc.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def lrs_at(step: int, tc: TrainConfig) -> list[float]:
    """Each optimizer's learning rate at `step`, in GPT.optimizers' order: AdamW's, then Muon's with muon."""
    return [lr_at(step, tc)] + ([lr_at(step, tc, tc.muon_lr)] if tc.optimizer == "muon" else [])


def make_optimizers(model: GPT, tc: TrainConfig, hw: hardware.Hardware) -> list[torch.optim.Optimizer]:
    """train.optimizer's optimizers for `model`: [AdamW] or [AdamW, Muon]."""
    return model.optimizers(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), fused=hw.device_type == "cuda",
                            muon_lr=tc.muon_lr if tc.optimizer == "muon" else None, compute_dtype=hw.dtype)


def optimizer_step(forward, optimizers, scaler, micro_batches, lrs, grad_clip: float,
                   hw: hardware.Hardware) -> torch.Tensor:
    """One optimizer step over gradient-accumulation micro-batches; returns their mean loss (a tensor, no sync).

    optimizers[i] runs at lrs[i]. Under DDP, gradients are all-reduced once, on the last micro-batch.
    """
    micro_batches = list(micro_batches)
    for optimizer, lr in zip(optimizers, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr
    total = torch.zeros((), device=hw.device)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with (nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()), hw.autocast():
            loss = forward(x, y) / len(micro_batches)
        scaler.scale(loss).backward()
        total += loss.detach()
    if grad_clip:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for o in optimizers for g in o.param_groups for p in g["params"]], grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return total


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fingerprint(params: Params, meta: dict, hw: hardware.Hardware, world_size: int) -> dict:
    """What a resumed run must share with the checkpoint for the result to be the same run's."""
    train = dataclasses.asdict(params.train)
    train.pop("checkpoint_interval")  # decides only when state is saved
    return {
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

    def __init__(self, params: Params, meta: dict, hw: hardware.Hardware, ranks: distributed.Ranks):
        tc = params.train
        self.hw, self.ranks, self.tokenizer = hw, ranks, meta["tokenizer"]
        self.fingerprint = fingerprint(params, meta, hw, ranks.world_size)
        self.model = GPT(params.model).to(hw.device)
        self.optimizers = make_optimizers(self.model, tc, hw)
        self.scaler = torch.amp.GradScaler(hw.device_type, enabled=hw.dtype == torch.float16)
        self.progress = Progress()
        # this rank's loss summed over the current log window: one tensor, continued across a resume so the
        # logged mean is bit-identical to an uninterrupted run's (and no per-step device sync)
        self.window_loss = torch.zeros((), device=hw.device)

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
            checkpoint.save(best_path, self.model, step=step, val_loss=val, tokenizer=self.tokenizer)

    def save(self, path: Path) -> None:
        """Write last.pt. A collective: every rank calls it (each rank's RNGs and loss window go in)."""
        rank_states = distributed.gather(self._rank_state(), self.ranks)
        if self.ranks.is_main:
            p = self.progress
            checkpoint.save(path, self.model, step=p.step, val_loss=p.val_points[-1][1], tokenizer=self.tokenizer,
                            training={"fingerprint": self.fingerprint, "optimizers": [o.state_dict() for o in self.optimizers],
                                      "scaler": self.scaler.state_dict(), "ranks": rank_states,
                                      "progress": dataclasses.asdict(p)})

    def resume(self, path: Path, max_iters: int, say) -> int:
        """Load path's training state when it belongs to this run and is unfinished: the step resumed at, or -1.

        A damaged file (truncated, garbage) is moved aside to path.damaged, and the run starts fresh.
        """
        if not path.exists():
            return -1
        try:
            state = checkpoint.load(path, map_location=self.hw.device)
        except checkpoint.DamagedCheckpoint as err:
            aside = path.with_name(path.name + ".damaged")
            if self.ranks.is_main:  # the other ranks find it damaged or gone: they start fresh too
                os.replace(path, aside)
            say(f"{err}; moved it to {aside} and starting fresh")
            return -1
        training = state.get("training")
        if training is None:
            say(f"{path}: holds no training state; starting fresh")
            return -1
        if training["fingerprint"] != self.fingerprint:
            say(f"{path}: params changed since it was saved ({_changes(training['fingerprint'], self.fingerprint)}); "
                f"starting fresh")
            return -1
        if state["step"] >= max_iters:
            say(f"{path}: that run finished (step {state['step']}); starting fresh")
            return -1
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, training["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.scaler.load_state_dict(training["scaler"])
        self._restore_rank_state(training["ranks"][self.ranks.rank])
        p = self.progress = Progress(**training["progress"])
        p.train_points, p.val_points = [tuple(x) for x in p.train_points], [tuple(x) for x in p.val_points]
        say(f"resuming from {path} at step {p.step} of {max_iters}")
        return p.step

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


class Validation:
    """The fixed validation windows, drawn once from the seed: every evaluation scores the very same tokens."""

    def __init__(self, data: np.ndarray, tc: TrainConfig, block_size: int, hw: hardware.Hardware, split: dict):
        self.data, self.block_size, self.hw = data, block_size, hw
        self.offsets = step_offsets(np.random.default_rng(tc.seed + 1), data, tc.eval_iters, tc.batch_size,
                                    block_size)
        # meta.json's {"tokens", "bytes"} of the split: its targets per UTF-8 byte, as evaluate counts them
        self._targets_per_byte = (split["tokens"] - 1) / split["bytes"] if split["bytes"] else math.nan

    def bits_per_byte(self, loss: float) -> float:
        """An estimate of the split's bits per byte from the windows' mean loss (nats per token): the loss in bits
        times the whole split's tokens per byte. The evaluate stage's bits_per_byte is the exact whole-split one."""
        return loss / math.log(2) * self._targets_per_byte

    def loss(self, forward, model: GPT) -> float:
        """Mean loss over the windows, through `forward` (the model, maybe compiled) in eval mode."""
        model.eval()
        with torch.no_grad(), self.hw.autocast():
            losses = [forward(*windows(self.data, o, self.block_size, self.hw.device)).item() for o in self.offsets]
        model.train()
        return float(np.mean(losses))


def load_data(tokens_dir: Path, params: Params) -> tuple[dict, np.memmap, np.memmap]:
    """meta.json and the train and validation tokens, checked against the params."""
    cfg, tc = params.model, params.train
    meta = bins.read_meta(tokens_dir)
    check_tokens(tokens_dir, meta, params.tokenizer)  # model.vocab_size >= tokenizer.vocab_size: config's check
    train_data = bins.load_split(tokens_dir, "train", cfg.block_size)
    val_data = bins.load_split(tokens_dir, "validation", cfg.block_size)
    windows_available = len(val_data) - cfg.block_size
    if tc.eval_iters * tc.batch_size > windows_available:
        raise UserError(f"train.eval_iters x train.batch_size = {tc.eval_iters * tc.batch_size} validation windows, "
                        f"but the validation split has only {windows_available} distinct windows of "
                        f"model.block_size tokens; lower train.eval_iters or use more validation stories")
    return meta, train_data, val_data


def train(params: Params, tokens_dir, models_dir, live_dir, plot_path) -> dict:
    """Train (or resume); write models_dir/{best,last}.pt, dvclive metrics and the loss plot.

    Returns a summary; summary["interrupted"] is True when Ctrl-C / SIGTERM stopped it after saving.
    """
    hw = hardware.setup(params.hardware)
    ranks = distributed.init(hw.device_type)
    try:
        return _train(params, share_hardware(hw, ranks, params), ranks, Path(tokens_dir), Path(models_dir),
                      live_dir, plot_path)
    finally:
        distributed.shutdown(ranks)


def share_hardware(hw: hardware.Hardware, ranks: distributed.Ranks, params: Params) -> hardware.Hardware:
    """This rank's device (its own GPU; on CPU, its share of the cores), and the malloc tuning on CPU."""
    if params.train.grad_accum_steps % ranks.world_size:
        raise UserError(f"train.grad_accum_steps ({params.train.grad_accum_steps}) must be divisible by the number of "
                        f"processes ({ranks.world_size}); each process takes an equal share of the micro-batches")
    if ranks.enabled and hw.device_type == "cuda":
        hw = dataclasses.replace(hw, device=torch.device("cuda", ranks.local_rank))
    elif ranks.enabled:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
        torch.set_num_threads(max(1, cpu_threads(params.hardware.threads) // local))
    if hw.device_type == "cpu":
        hardware.keep_freed_memory()
    return hw


def _train(params: Params, hw, ranks, tokens_dir: Path, models_dir: Path, live_dir, plot_path) -> dict:
    tc, cfg = params.train, params.model
    seed_everything(tc.seed + ranks.rank)
    meta, train_data, val_data = load_data(tokens_dir, params)
    state = TrainState(params, meta, hw, ranks)
    sampler = train_windows(tc.windows, tc.seed, len(train_data), cfg.block_size)  # alike on every rank
    model, say = state.model, _printer(ranks)
    last_path, best_path = models_dir / "last.pt", models_dir / "best.pt"
    resumed_at = state.resume(last_path, tc.max_iters, say)
    evaluator = maybe_compile(model, params.hardware.compile, (tc.batch_size, cfg.block_size))
    forward = distributed.wrap(evaluator, ranks, hw.device)  # validation: this rank alone, no DDP
    validation = Validation(val_data, tc, cfg.block_size, hw, meta["splits"]["validation"])
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size
    say(f"training {model.num_params() / 1e6:.2f}M parameters ({model.num_params(embeddings=False) / 1e6:.2f}M "
        f"outside the embeddings) on {hw.device} x{ranks.world_size} in {str(hw.dtype).removeprefix('torch.')}, "
        f"{tokens_per_step} tokens per step")
    stop, live = _StopRequest(), _live(live_dir, state.progress, validation) if ranks.is_main else None
    bar = tqdm(total=tc.max_iters, initial=state.progress.step, desc="train", unit="step", file=sys.stderr,
               disable=not ranks.is_main)
    interrupted = False
    try:
        window_start = time.perf_counter()
        while True:
            step = state.progress.step
            saved = step == resumed_at  # at the resumed step, evaluating and saving were done before the checkpoint
            if not saved:
                paused = time.perf_counter()
                if ranks.is_main and (step % tc.eval_interval == 0 or step == tc.max_iters):
                    val = validation.loss(evaluator, model)
                    bpb = validation.bits_per_byte(val)
                    _log(live, step, _val_curves(val, bpb))
                    state.add_val_point(step, val, best_path)
                    bar.set_postfix(val=f"{val:.3f}", val_bpb=f"{bpb:.3f}", refresh=False)
                if step > 0 and (step % tc.checkpoint_interval == 0 or step == tc.max_iters):
                    state.save(last_path)
                    saved = True
                window_start += time.perf_counter() - paused  # evaluating and saving is not training throughput
            if step == tc.max_iters:
                break
            if distributed.any_rank(stop.requested, ranks, hw.device):
                if not saved:
                    state.save(last_path)
                interrupted = True
                break
            faults.trip(f"step:{step}")

            offsets = sampler.step(step, tc.grad_accum_steps, tc.batch_size)
            micro_batches = (windows(train_data, o, cfg.block_size, hw.device)
                             for o in distributed.share(offsets, ranks))
            state.window_loss += optimizer_step(forward, state.optimizers, state.scaler, micro_batches,
                                                lrs_at(step, tc), tc.grad_clip, hw)
            state.progress.window_steps += 1
            state.progress.step = step = step + 1
            bar.update()

            if step % tc.log_interval == 0:
                train_loss, seconds = state.end_log_window(), time.perf_counter() - window_start
                tok_s = tc.log_interval * tokens_per_step / seconds
                state.progress.train_points.append((step, train_loss))
                _log(live, step, {"train/loss": train_loss},
                     {"lr": lr_at(step - 1, tc), "tokens": step * tokens_per_step, "tokens_per_sec": tok_s})
                best = state.progress.best_val
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", val=f"{best:.3f}",
                                val_bpb=f"{validation.bits_per_byte(best):.3f}")
                window_start = time.perf_counter()
    finally:
        stop.restore()
        bar.close()
        if live is not None:
            live.end()

    p = state.progress
    if ranks.is_main:
        plot_loss(p.train_points, p.val_points, plot_path,
                  title=f"{cfg.n_layer} layers x {cfg.n_embd}, best val loss {p.best_val:.3f}")
    return {"best_val_loss": p.best_val, "steps": p.step, "interrupted": interrupted}


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


def _live(live_dir, progress: Progress, validation: Validation):
    """A dvclive logger; on resume the curves so far are written again from the checkpoint's history,
    so they continue exactly (points logged after that checkpoint are not kept)."""
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


class _StopRequest:
    """Ctrl-C / SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again to quit at once)",
              file=sys.stderr)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _printer(ranks):
    def say(message: str) -> None:
        if ranks.is_main:
            print(message, file=sys.stderr)
    return say


def maybe_compile(model: GPT, enabled: bool, batch_shape: tuple[int, int]):
    """torch.compile'd model when asked and it works here; otherwise the eager model, with one warning.

    A trial forward finds out (inductor fails at the first call when there is no C++ compiler, say). It runs at
    batch_shape, the (sequences, tokens) of every later batch, under no_grad: that is validation's graph, so
    compiling it is not wasted. Shapes are static: a second shape would otherwise recompile everything with
    dynamic shapes, which costs compile time and, on CPU, speed. The trial runs under a forked RNG, so dropout
    in it draws nothing from the run's random streams: resume stays exact.
    """
    if not enabled:
        return model
    device = next(model.parameters()).device
    try:
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            idx = torch.zeros(batch_shape, dtype=torch.long, device=device)
            compiled(idx, idx)
        return compiled
    except Exception as err:  # compile needs a C++ toolchain and more; training must not depend on it
        warnings.warn(f"torch.compile failed, running without it: {brief(err, limit=200)}", stacklevel=2)
        return model
