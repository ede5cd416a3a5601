"""One optimizer step and what shapes it: the learning-rate schedule, the optimizers and GradScaler, the update over
gradient-accumulation micro-batches, and torch.compile.

Knows nothing of checkpoints, logging or when to evaluate: the loop (nanoslm.train.loop) and bench call these.
"""

import math
import warnings
from contextlib import nullcontext

import torch

from .. import hardware
from ..config import TrainConfig
from ..errors import brief
from ..model import GPT


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


def make_scaler(hw: hardware.Hardware) -> torch.amp.GradScaler:
    """The GradScaler: it scales the loss only under float16 (a pass-through otherwise)."""
    return torch.amp.GradScaler(hw.device_type, enabled=hw.dtype == torch.float16)


def optimizer_step(forward, optimizers, scaler, micro_batches, lrs, grad_clip: float,
                   hw: hardware.Hardware) -> torch.Tensor:
    """One optimizer step over gradient-accumulation micro-batches; returns their mean loss (a tensor, no sync).

    optimizers[i] runs at lrs[i]. Under DDP, gradients are all-reduced once, on the last micro-batch. Under
    float16, an inf or NaN gradient anywhere skips every optimizer's update (see _skip_all).
    """
    micro_batches = list(micro_batches)
    for optimizer, lr in zip(optimizers, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr
    total = torch.zeros((), device=hw.device)
    for i, batch in enumerate(micro_batches):  # (inputs, targets) or (inputs, targets, learn)
        last = i == len(micro_batches) - 1
        with (nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()), hw.autocast():
            loss = forward(*batch) / len(micro_batches)
        scaler.scale(loss).backward()
        total += loss.detach()
    params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    if grad_clip or scaler.is_enabled():
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip else None
    if not _skip_all(scaler, params, norm):
        for optimizer in optimizers:
            scaler.step(optimizer)
    scaler.update()  # after an inf: a smaller scale
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return total


def _skip_all(scaler: torch.amp.GradScaler, params, norm: torch.Tensor | None) -> bool:
    """True when the GradScaler found an inf or NaN among the (unscaled) gradients of any optimizer.

    GradScaler decides for each optimizer alone, from its own gradients: an inf in one of Muon's matrices would skip
    Muon and let AdamW step, on gradients that clipping has zeroed or made NaN, moving its weights (weight decay) and
    its moments. One decision for all keeps the skipped step a no-op. False (and no sync) without float16.
    """
    if not scaler.is_enabled():
        return False
    if norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return not bool(torch.isfinite(norm))


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
