"""The train stage: AdamW with warmup + cosine decay on random windows of the train tokens.

Validation runs on one fixed set of windows (drawn once from the seed), so every evaluation, and
every experiment with the same seed and data, scores the very same tokens.

Resumable exactly: models/last.pt holds everything that decides the rest of the run (weights,
optimizer, GradScaler, every RNG, the batch sampler, the partly summed loss of the current log
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
from .batches import random_offsets, windows
from .config import Params, TrainConfig
from .errors import UserError
from .model import GPT
from .plotting import plot_loss


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, cosine decay, then flat at min_lr."""
    if step < tc.warmup_iters:
        return tc.lr * (step + 1) / (tc.warmup_iters + 1)
    if step >= tc.lr_decay_iters:
        return tc.min_lr
    progress = (step - tc.warmup_iters) / max(1, tc.lr_decay_iters - tc.warmup_iters)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def check_data(train_data, val_data, block_size: int) -> None:
    for name, data in (("train", train_data), ("validation", val_data)):
        if len(data) <= block_size:
            raise UserError(f"the {name} split has {len(data)} tokens, too few for model.block_size {block_size}; "
                            f"lower model.block_size or use more data (data.max_*_stories)")


def optimizer_step(forward, optimizer, scaler, micro_batches, lr: float, grad_clip: float,
                   hw: hardware.Hardware) -> torch.Tensor:
    """One optimizer step over gradient-accumulation micro-batches; returns their mean loss (a tensor, no sync).

    Under DDP, gradients are all-reduced once, on the last micro-batch.
    """
    micro_batches = list(micro_batches)
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
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
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


def train(params: Params, tokens_dir, models_dir, live_dir, plot_path) -> dict:
    """Train (or resume); write models_dir/{best,last}.pt, dvclive metrics and the loss plot.

    Returns a summary; summary["interrupted"] is True when Ctrl-C / SIGTERM stopped it after saving.
    """
    tc, cfg = params.train, params.model
    hw = hardware.setup(params.hardware)
    ranks = distributed.init(hw.device_type)
    try:
        return _train(params, tc, cfg, hw, ranks, Path(tokens_dir), Path(models_dir), live_dir, plot_path)
    finally:
        distributed.shutdown(ranks)


def _train(params, tc, cfg, hw, ranks, tokens_dir, models_dir, live_dir, plot_path) -> dict:
    if ranks.enabled:
        if hw.device_type == "cuda":
            hw = dataclasses.replace(hw, device=torch.device("cuda", ranks.local_rank))
        else:  # share the cores among this node's processes
            local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
            torch.set_num_threads(max(1, (params.hardware.threads or os.cpu_count() or 1) // local))
    if tc.grad_accum_steps % ranks.world_size:
        raise UserError(f"train.grad_accum_steps ({tc.grad_accum_steps}) must be divisible by the number of "
                        f"processes ({ranks.world_size}); each process takes an equal share of the micro-batches")
    if hw.device_type == "cpu":
        hardware.keep_freed_memory()
    seed_everything(tc.seed + ranks.rank)

    meta = bins.read_meta(tokens_dir)
    train_data = bins.load_split(tokens_dir, "train")
    val_data = bins.load_split(tokens_dir, "validation")
    check_data(train_data, val_data, cfg.block_size)
    if meta["tokenizer"] != params.tokenizer.name:
        raise UserError(f"{tokens_dir}/meta.json: tokens are from tokenizer {meta['tokenizer']!r} but tokenizer.name "
                        f"is {params.tokenizer.name!r}; rerun: dvc repro tokenize")
    windows_available = len(val_data) - cfg.block_size
    if tc.eval_iters * tc.batch_size > windows_available:
        raise UserError(f"train.eval_iters x train.batch_size = {tc.eval_iters * tc.batch_size} validation windows, "
                        f"but the validation split has only {windows_available} distinct windows of "
                        f"model.block_size tokens; lower train.eval_iters or use more validation stories")
    if meta["vocab_size"] > cfg.vocab_size:
        raise UserError(f"{tokens_dir}/meta.json: tokenizer has {meta['vocab_size']} ids but model.vocab_size is "
                        f"{cfg.vocab_size}; set model.vocab_size to at least {meta['vocab_size']}")
    for name, data in (("train", train_data), ("validation", val_data)):
        top = int(data.max())  # one pass over the memmap; an id past the embedding would crash mid-run
        if top >= meta["vocab_size"]:
            raise UserError(f"{tokens_dir}/{name}.bin: token id {top} is not below the tokenizer's "
                            f"{meta['vocab_size']} ids, so the file is damaged; rerun: dvc repro --force tokenize")

    model = GPT(cfg).to(hw.device)
    optimizer = model.optimizer(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), fused=hw.device_type == "cuda")
    scaler = torch.amp.GradScaler(hw.device_type, enabled=hw.dtype == torch.float16)
    sampler = np.random.default_rng(tc.seed)  # one global sampler, identical on every rank
    progress = Progress()
    print_main = _printer(ranks)

    last_path, best_path = models_dir / "last.pt", models_dir / "best.pt"
    fp = fingerprint(params, meta, hw, ranks.world_size)
    # this rank's loss summed over the current log window: one tensor, continued across a resume so the
    # logged mean is bit-identical to an uninterrupted run's (and no per-step device sync)
    window_loss = torch.zeros((), device=hw.device)
    resumed = _resume(last_path, fp, model, optimizer, scaler, sampler, progress, window_loss, ranks, hw, tc,
                      print_main)

    forward = maybe_compile(model, params.hardware.compile)
    evaluator = forward
    if ranks.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[ranks.local_rank] if hw.device_type == "cuda" else None)

    val_offsets = random_offsets(np.random.default_rng(tc.seed + 1), val_data, tc.eval_iters * tc.batch_size,
                                 cfg.block_size).reshape(tc.eval_iters, tc.batch_size)
    per_rank = tc.grad_accum_steps // ranks.world_size
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad(), hw.autocast():
            losses = [evaluator(*windows(val_data, o, cfg.block_size, hw.device)).item() for o in val_offsets]
        model.train()
        return float(np.mean(losses))

    def save_last() -> None:
        rank_states = distributed.gather(_rank_state(hw, window_loss), ranks)  # a collective: every rank calls it
        if ranks.is_main:
            checkpoint.save(last_path, model, step=progress.step, val_loss=progress.val_points[-1][1],
                            tokenizer=meta["tokenizer"], training={
                                "fingerprint": fp, "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict(), "sampler": sampler.bit_generator.state,
                                "ranks": rank_states, "progress": dataclasses.asdict(progress)})

    print_main(f"training {model.num_params() / 1e6:.2f}M parameters ({model.num_params(embeddings=False) / 1e6:.2f}M "
               f"outside the embeddings) on {hw.device} x{ranks.world_size} in {str(hw.dtype).removeprefix('torch.')}, "
               f"{tokens_per_step} tokens per step")
    stop = _StopRequest()
    live = _live(live_dir, progress) if ranks.is_main else None
    bar = tqdm(total=tc.max_iters, initial=progress.step, desc="train", unit="step", file=sys.stderr,
               disable=not ranks.is_main)
    interrupted = False
    try:
        window_start = time.perf_counter()
        while True:
            step = progress.step
            saved = step == resumed  # at the resumed step, evaluating and saving were done before the checkpoint
            if not saved:
                paused = time.perf_counter()
                if ranks.is_main and (step % tc.eval_interval == 0 or step == tc.max_iters):
                    val = validation_loss()
                    progress.val_points.append((step, val))
                    _log(live, step, {"val/loss": val})
                    if val < progress.best_val:
                        progress.best_val = val
                        checkpoint.save(best_path, model, step=step, val_loss=val, tokenizer=meta["tokenizer"])
                    bar.set_postfix(val=f"{val:.3f}", refresh=False)
                if step > 0 and (step % tc.checkpoint_interval == 0 or step == tc.max_iters):
                    save_last()
                    saved = True
                window_start += time.perf_counter() - paused  # evaluating and saving is not training throughput
            if step == tc.max_iters:
                break
            if distributed.any_rank(stop.requested, ranks, hw.device):
                if not saved:
                    save_last()
                interrupted = True
                break
            faults.trip(f"step:{step}")

            offsets = random_offsets(sampler, train_data, tc.grad_accum_steps * tc.batch_size, cfg.block_size)
            mine = offsets.reshape(tc.grad_accum_steps, tc.batch_size)[ranks.rank * per_rank:][:per_rank]
            micro_batches = (windows(train_data, o, cfg.block_size, hw.device) for o in mine)
            loss = optimizer_step(forward, optimizer, scaler, micro_batches, lr_at(step, tc), tc.grad_clip, hw)
            window_loss += loss
            progress.window_steps += 1
            progress.step = step = step + 1
            bar.update()

            if step % tc.log_interval == 0:
                train_loss = distributed.mean(window_loss, ranks).item() / progress.window_steps
                tok_s = progress.window_steps * tokens_per_step / (time.perf_counter() - window_start)
                progress.train_points.append((step, train_loss))
                _log(live, step, {"train/loss": train_loss},
                     {"lr": lr_at(step - 1, tc), "tokens": step * tokens_per_step, "tokens_per_sec": tok_s})
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", val=f"{progress.best_val:.3f}")
                window_loss.zero_()
                progress.window_steps = 0
                window_start = time.perf_counter()
    finally:
        stop.restore()
        bar.close()
        if live is not None:
            live.end()

    if ranks.is_main:
        plot_loss(progress.train_points, progress.val_points, plot_path,
                  title=f"{cfg.n_layer} layers x {cfg.n_embd}, best val loss {progress.best_val:.3f}")
    return {"best_val_loss": progress.best_val, "steps": progress.step, "interrupted": interrupted}


def _resume(path: Path, fp: dict, model, optimizer, scaler, sampler, progress: Progress, window_loss, ranks, hw,
            tc, say) -> int:
    """Load last.pt's training state when it belongs to this run and is unfinished; the step resumed at, or -1."""
    if not path.exists():
        return -1
    state = checkpoint.load(path, map_location=hw.device)
    training = state.get("training")
    if training is None:
        say(f"{path}: holds no training state; starting fresh")
        return -1
    if training["fingerprint"] != fp:
        changed = _changes(training["fingerprint"], fp)
        say(f"{path}: params changed since it was saved ({changed}); starting fresh")
        return -1
    if state["step"] >= tc.max_iters:
        say(f"{path}: that run finished (step {state['step']}); starting fresh")
        return -1
    rank_states = training["ranks"]
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(training["optimizer"])
    scaler.load_state_dict(training["scaler"])
    sampler.bit_generator.state = training["sampler"]
    _restore_rank_state(rank_states[ranks.rank], hw, window_loss)
    for key, value in training["progress"].items():
        setattr(progress, key, value)
    progress.train_points = [tuple(p) for p in progress.train_points]
    progress.val_points = [tuple(p) for p in progress.val_points]
    say(f"resuming from {path} at step {progress.step} of {tc.max_iters}")
    return progress.step


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


def _rank_state(hw: hardware.Hardware, window_loss: torch.Tensor) -> dict:
    """What differs between ranks: the RNGs, and the loss summed so far in the log window."""
    legacy = np.random.get_state()
    return {
        "window_loss": window_loss.item(),
        "python": random.getstate(),
        "numpy": (legacy[0], legacy[1].tolist(), *legacy[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(hw.device) if hw.device_type == "cuda" else None,
    }


def _restore_rank_state(state: dict, hw: hardware.Hardware, window_loss: torch.Tensor) -> None:
    window_loss.fill_(state["window_loss"])  # float32 -> Python float -> float32 is exact
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and hw.device_type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), hw.device)


def _live(live_dir, progress: Progress):
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
        _log(live, step, history[step])
    return live


def _log(live, step: int, curves: dict, summary_only: dict | None = None) -> None:
    if live is None:
        return
    live.step = step
    for name, value in curves.items():
        live.log_metric(name, value)
    for name, value in (summary_only or {}).items():  # metrics.json only: dvc.yaml declares just the loss curves
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


def maybe_compile(model: GPT, enabled: bool):
    """torch.compile'd forward when asked and it works here; otherwise the eager model, with a warning."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            idx = torch.zeros((1, 8), dtype=torch.long, device=next(model.parameters()).device)
            compiled(idx, idx)
        return compiled
    except Exception as err:  # compile needs a C++ toolchain and more; training must not depend on it
        warnings.warn(f"torch.compile failed, running without it: {str(err).splitlines()[0][:200]}")
        return model
