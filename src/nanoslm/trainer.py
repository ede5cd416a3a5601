"""The train stage: AdamW with warmup + cosine decay on random windows of the train tokens.

Validation runs on one fixed set of windows (drawn once from the seed), so every evaluation, and
every experiment with the same seed and data, scores the very same tokens.
"""

import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import bins, checkpoint, hardware
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


def windows(data: np.ndarray, offsets: np.ndarray, block_size: int, device: torch.device):
    """Inputs and next-token targets for windows of block_size tokens starting at `offsets`."""
    rows = torch.from_numpy(data[offsets[:, None] + np.arange(block_size + 1)].astype(np.int64))
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    else:
        rows = rows.to(device)
    return rows[:, :-1], rows[:, 1:]


def random_offsets(rng: np.random.Generator, data: np.ndarray, count: int, block_size: int) -> np.ndarray:
    return rng.integers(0, len(data) - block_size, size=count)


def check_data(train_data, val_data, block_size: int) -> None:
    for name, data in (("train", train_data), ("validation", val_data)):
        if len(data) <= block_size:
            raise UserError(f"the {name} split has {len(data)} tokens, too few for model.block_size {block_size}; "
                            f"lower model.block_size or use more data (data.max_*_stories)")


def optimizer_step(forward, optimizer, scaler, micro_batches, lr: float, grad_clip: float,
                   hw: hardware.Hardware) -> torch.Tensor:
    """One optimizer step over gradient-accumulation micro-batches; returns their mean loss (a tensor, no sync)."""
    micro_batches = list(micro_batches)
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=hw.device)
    for x, y in micro_batches:
        with hw.autocast():
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


def train(params: Params, tokens_dir, models_dir, live_dir, plot_path) -> dict:
    """Train from scratch; write models_dir/{best,last}.pt, dvclive metrics and the loss plot."""
    from dvclive import Live  # slow import; only the train stage needs it

    tc, cfg = params.train, params.model
    hw = hardware.setup(params.hardware)
    if hw.device_type == "cpu":
        hardware.keep_freed_memory()
    seed_everything(tc.seed)

    train_data = bins.load_split(tokens_dir, "train")
    val_data = bins.load_split(tokens_dir, "validation")
    check_data(train_data, val_data, cfg.block_size)
    max_id = int(max(train_data.max(), val_data.max()))
    if max_id >= cfg.vocab_size:
        raise UserError(f"token id {max_id} in {tokens_dir} is >= model.vocab_size {cfg.vocab_size}; "
                        f"rerun: dvc repro --force tokenize")

    model = GPT(cfg).to(hw.device)
    optimizer = model.optimizer(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), hw.device_type)
    scaler = torch.amp.GradScaler(hw.device_type, enabled=hw.dtype == torch.float16)
    forward = _maybe_compile(model, params.hardware.compile)

    sampler = np.random.default_rng(tc.seed)
    val_offsets = random_offsets(np.random.default_rng(tc.seed + 1), val_data, tc.eval_iters * tc.batch_size,
                                 cfg.block_size).reshape(tc.eval_iters, tc.batch_size)
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad(), hw.autocast():
            losses = [forward(*windows(val_data, o, cfg.block_size, hw.device)).item() for o in val_offsets]
        model.train()
        return float(np.mean(losses))

    models_dir = Path(models_dir)
    best_val = float("inf")
    train_points, val_points = [], []
    print(f"training {model.num_params() / 1e6:.2f}M parameters ({model.num_params(embeddings=False) / 1e6:.2f}M "
          f"outside the embeddings) on {hw.device} in "
          f"{str(hw.dtype).removeprefix('torch.')}, {tokens_per_step} tokens per step", file=sys.stderr)

    with Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False) as live, \
            tqdm(total=tc.max_iters, desc="train", unit="step", file=sys.stderr) as bar:
        running, window_start, window_steps = torch.zeros((), device=hw.device), time.perf_counter(), 0
        for step in range(tc.max_iters + 1):
            if step % tc.eval_interval == 0 or step == tc.max_iters:
                val = validation_loss()
                val_points.append((step, val))
                live.step = step
                live.log_metric("val/loss", val)
                live.next_step()
                if val < best_val:
                    best_val = val
                    checkpoint.save(models_dir / "best.pt", model, step=step, val_loss=val,
                                    tokenizer=params.tokenizer.name)
                bar.set_postfix(val=f"{val:.3f}", refresh=False)
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if step == tc.max_iters:
                break

            lr = lr_at(step, tc)
            micro_batches = (windows(train_data, random_offsets(sampler, train_data, tc.batch_size, cfg.block_size),
                                     cfg.block_size, hw.device) for _ in range(tc.grad_accum_steps))
            running += optimizer_step(forward, optimizer, scaler, micro_batches, lr, tc.grad_clip, hw)
            window_steps += 1
            bar.update()

            if (step + 1) % tc.log_interval == 0:
                train_loss = running.item() / window_steps
                tok_s = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                train_points.append((step + 1, train_loss))
                live.step = step + 1
                live.log_metric("train/loss", train_loss)
                # only the losses get curves (declared in dvc.yaml); these three go to metrics.json
                live.log_metric("lr", lr, plot=False)
                live.log_metric("tokens", (step + 1) * tokens_per_step, plot=False)
                live.log_metric("tokens_per_sec", tok_s, plot=False)
                live.next_step()
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", val=f"{best_val:.3f}")
                running.zero_()
                window_start, window_steps = time.perf_counter(), 0

    checkpoint.save(models_dir / "last.pt", model, step=tc.max_iters, val_loss=val_points[-1][1],
                    tokenizer=params.tokenizer.name)
    plot_loss(train_points, val_points, plot_path,
              title=f"{cfg.n_layer} layers x {cfg.n_embd}, best val loss {best_val:.3f}")
    return {"best_val_loss": best_val, "steps": tc.max_iters}


def _maybe_compile(model: GPT, enabled: bool):
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
        warnings.warn(f"torch.compile failed, training without it: {str(err).splitlines()[0][:200]}")
        return model
