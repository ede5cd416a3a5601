"""The benchmark's phases, each run in a child process: `python -m nanoslm.bench --phase NAME`.

reference and train time training steps on the same weights and batches; tokenize and sample time the
tokenizer and the generation engine. Each writes its result as JSON for the parent (nanoslm.bench).
"""

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
import typing
from pathlib import Path

from ..config import Params, cpu_threads
from ..gpt2 import N_VOCAB as GPT2_VOCAB
from ..errors import UserError
from . import GB, WARMUP_STEPS


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (VmHWM on Linux: reset by exec, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GB


def _params_from_dict(raw: dict) -> Params:
    hints = typing.get_type_hints(Params)
    return Params(**{name: hints[name](**values) for name, values in raw.items()})


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _train_setup(spec: dict, fast: bool):
    """Hardware, the seeded model and every step's window offsets: identical for loops of the same vocabulary.

    The reference loop's vocabulary is spec["vocab_size"] (GPT-2's full one, or the params' own). Batches come
    from spec["tokens_dir"] when all its ids fit the model's vocabulary, else from random ids below it.
    """
    import numpy as np
    import torch

    from .. import hardware
    from ..tokens import load_split, read_meta
    from ..model import GPT
    from ..batches import train_windows

    params = _params_from_dict(spec["params"])
    if not fast:
        # a plain loop on plain tokens: no chat ids, whatever requests.mix says
        params = params.updated("requests", mix=0.0).updated("model", vocab_size=spec["vocab_size"])
    tc, cfg = params.train, params.model
    hw = hardware.setup(params.hardware)
    if not fast:
        # a plain loop: fp32 matmuls at full precision (no TF32 / reduced-precision fp32 from setup)
        torch.set_float32_matmul_precision("highest")
    elif hw.device_type == "cpu":
        hardware.keep_freed_memory()  # as the train stage does; this process only
    if spec["tokens_dir"] and read_meta(spec["tokens_dir"])["vocab_size"] <= cfg.vocab_size:
        data, source = load_split(spec["tokens_dir"], "train"), spec["tokens_dir"]
    else:
        data = np.random.default_rng(tc.seed + 2).integers(0, min(cfg.vocab_size, GPT2_VOCAB),
                                                           size=max(1 << 20, 4 * cfg.block_size), dtype=np.uint16)
        source = f"random token ids below {min(cfg.vocab_size, GPT2_VOCAB):,} ({len(data):,})"
    torch.manual_seed(tc.seed)
    model = GPT(cfg).to(hw.device)  # built on the CPU from the seed, then moved: same weights in both loops
    model.train()
    sampler = train_windows(tc.windows, tc.seed, data, cfg.block_size)  # speed: a step costs the same with conversations whole
    total = WARMUP_STEPS + spec["steps"]
    offsets = [sampler.step(step, tc.grad_accum_steps, tc.batch_size) for step in range(total)]  # as the trainer's
    return params, hw, model, (data, source), offsets


def _timed_loop(step_fn, total: int, device) -> tuple[list, float]:
    """Run step_fn(step) -> loss tensor for `total` steps; time all but the first WARMUP_STEPS."""
    import torch

    losses, start = [], None
    for step in range(total):
        if step == WARMUP_STEPS:
            _sync(device)
            start = time.perf_counter()
        torch.manual_seed(step)  # same dropout masks in both loops (where dropout > 0)
        losses.append(step_fn(step))
    _sync(device)
    return [float(loss) for loss in losses], time.perf_counter() - start


def _train_result(params, hw, model, source: str, spec, losses, seconds) -> dict:
    import torch

    cfg, tc = params.model, params.train
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size
    tokens_per_sec = spec["steps"] * tokens_per_step / seconds
    n_non_embedding = model.num_params(embeddings=False)
    fpt = model.flops_per_token()
    result = {
        "device": str(hw.device), "torch": torch.__version__, "dtype": _dtype_name(hw.dtype),
        "tokens_per_step": tokens_per_step,
        "data": source,
        "model": {"params": model.num_params(), "params_non_embedding": n_non_embedding,
                  "flops_per_token": fpt, **dataclasses.asdict(cfg)},
        "tokens_per_sec": tokens_per_sec, "step_ms": 1000 * seconds / spec["steps"],
        "achieved_tflops": fpt * tokens_per_sec / 1e12, "losses": losses, "peak_rss_gb": peak_rss_gb(),
    }
    if hw.device_type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / GB
    return result


def reference_logits(model, x):
    """The reference's full (B, T, vocab) logits, with a plain matmul against the tied head."""
    return model.hidden(x) @ model.lm_head.weight.T


def phase_reference(spec: dict) -> dict:
    """The plain loop a nanoGPT user runs: fp32, no autocast, full logits + F.cross_entropy, torch AdamW on the
    params' schedule, untuned malloc; with spec["vocab_size"] ids (GPT-2's 50,257, or the params' own)."""
    import torch
    import torch.nn.functional as F

    from ..batches import windows
    from ..train import lr_at

    params, hw, model, (data, source), offsets = _train_setup(spec, fast=False)
    tc, cfg = params.train, params.model
    (optimizer,) = model.optimizers(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))  # torch's default AdamW kernel

    def step_fn(step):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        total = torch.zeros((), device=hw.device)
        for o in offsets[step]:
            x, y = windows(data, o, cfg.block_size, hw.device)
            logits = reference_logits(model, x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)) / len(offsets[step])
            loss.backward()
            total += loss.detach()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    losses, seconds = _timed_loop(step_fn, len(offsets), hw.device)
    result = _train_result(params, hw, model, source, spec, losses, seconds)
    result["dtype"] = "float32"
    return result


def phase_train(spec: dict) -> dict | None:
    """The train stage's fast path with the params as they are (optimizer, schedule, compile, dtype, vocabulary,
    processes), on the weights and batches of the same-vocabulary reference, plus the device's measured peak
    FLOP/s. With hardware.nproc_per_node > 1 it runs under torchrun, each rank on its share of the micro-batches
    and cores as in the train stage; rank 0 reports (peak RSS: the largest rank's) and the others return None."""
    import torch

    from .. import distributed
    from ..batches import windows
    from ..train import lrs_at, make_optimizers, make_scaler, maybe_compile, optimizer_step

    params, hw, model, (data, source), offsets = _train_setup(spec, fast=True)
    tc, cfg = params.train, params.model
    ranks = distributed.init(hw.device_type)
    hw = distributed.share_hardware(hw, ranks, params)
    model = model.to(hw.device)
    optimizers = make_optimizers(model, tc, hw)
    scaler = make_scaler(hw)
    compiled = maybe_compile(model, params.hardware.compile, (tc.batch_size, cfg.block_size))
    forward = distributed.wrap(compiled, ranks, hw.device)

    def step_fn(step):
        micro_batches = (windows(data, o, cfg.block_size, hw.device) for o in distributed.share(offsets[step], ranks))
        loss = optimizer_step(forward, optimizers, scaler, micro_batches, lrs_at(step, tc), tc.grad_clip, hw)
        return distributed.mean(loss, ranks)  # the global batch's mean, as with one process

    losses, seconds = _timed_loop(step_fn, len(offsets), hw.device)
    result = _train_result(params, hw, model, source, spec, losses, seconds)
    result.update(compile=compiled is not model, optimizer=tc.optimizer, schedule=tc.schedule,
                  processes=ranks.world_size,
                  peak_rss_gb=max(distributed.gather(result["peak_rss_gb"], ranks)))
    distributed.shutdown(ranks)
    if not ranks.is_main:
        return None
    del optimizers, model, forward, compiled
    torch.set_num_threads(cpu_threads(params.hardware.threads))  # the peak of every core, as one process sees it
    peak, size = peak_matmul_flops(hw)
    result.update(peak_tflops=peak / 1e12, peak_matmul=f"{size}x{size}x{size} {_dtype_name(hw.dtype)}",
                  mfu=result["achieved_tflops"] * 1e12 / peak)
    return result


def peak_matmul_flops(hw, reps: int = 5) -> tuple[float, int]:
    """Best-of-`reps` FLOP/s of a large square matmul in the training dtype (2048^3 on CPU, 8192^3 on GPU)."""
    import torch

    size = {"cuda": 8192, "mps": 4096}.get(hw.device_type, 2048)
    a = torch.randn(size, size, device=hw.device, dtype=hw.dtype)
    b = torch.randn(size, size, device=hw.device, dtype=hw.dtype)
    times = []
    for _ in range(reps + 1):
        _sync(hw.device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(hw.device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times[1:]), size  # the first one warms up


def phase_tokenize(spec: dict) -> dict:
    """nanoslm.tokenization.tokenize_split on the corpus, with the params' threads and batch size."""
    from ..tokenization import tokenize_split
    from ..tokenizer import get_encoding

    params = _params_from_dict(spec["params"])
    enc = get_encoding(params.tokenizer.name)
    nbytes = Path(spec["txt"]).stat().st_size
    start = time.perf_counter()
    stats = tokenize_split(spec["txt"], spec["bin"], enc, params.tokenizer.batch_stories, params.hardware.threads)
    seconds = time.perf_counter() - start
    return {"corpus_mb": nbytes / 1e6, "stories": stats["stories"], "tokens": stats["tokens"], "seconds": seconds,
            "mb_per_sec": nbytes / 1e6 / seconds, "tokens_per_sec": stats["tokens"] / seconds,
            "threads": cpu_threads(params.hardware.threads), "peak_rss_gb": peak_rss_gb()}


def generate_tokens(model, prompt: list[int], max_new_tokens: int, sample_cfg, hw, use_cache: bool) -> int:
    """Sample up to max_new_tokens after `prompt` at batch 1 with the KV cache on or off; return how many came.

    The only place that knows the generation API (nanoslm.engine). eot=-1 matches no id, so a random
    model never stops early. The engine casts a bfloat16 device's model to bfloat16 in place, as sampling does.
    """
    import torch

    from ..engine import Engine

    sampling = dataclasses.replace(sample_cfg, max_new_tokens=max_new_tokens)
    generator = torch.Generator().manual_seed(sample_cfg.seed)
    (new,) = Engine(model, hw, eot=-1).generate([prompt], sampling, [generator], use_cache=use_cache)
    return len(new)


def phase_sample(spec: dict) -> dict:
    """New tokens/s at batch 1 for the preset's model (random weights: speed doesn't depend on them)."""
    import torch

    from .. import hardware
    from ..model import GPT
    from ..tokenizer import get_encoding

    params = _params_from_dict(spec["params"])
    hw = hardware.setup(params.hardware)
    torch.manual_seed(params.train.seed)
    model = GPT(params.model).to(hw.device).eval()
    # random weights: the prompt only sets the context's length, so GPT-2's ids are folded into a pruned vocabulary
    prompt = [t % params.model.vocab_size for t in get_encoding(params.tokenizer.name).encode_ordinary(
        params.sample.prompts[0])]
    n_new = spec["sample_tokens"]
    result = {"device": str(hw.device), "dtype": _dtype_name(hw.dtype), "batch_size": 1, "new_tokens": n_new,
              "prompt_tokens": len(prompt)}
    for use_cache, key in ((True, "tokens_per_sec"), (False, "tokens_per_sec_no_cache")):
        generate_tokens(model, prompt, 8, params.sample, hw, use_cache)  # warm-up
        _sync(hw.device)
        start = time.perf_counter()
        count = generate_tokens(model, prompt, n_new, params.sample, hw, use_cache)
        _sync(hw.device)
        result[key] = count / (time.perf_counter() - start)
    result["kv_cache_speedup"] = result["tokens_per_sec"] / result["tokens_per_sec_no_cache"]
    result["peak_rss_gb"] = peak_rss_gb()
    if hw.device_type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / GB
    return result


_PHASE_FUNCS = {"reference": phase_reference, "train": phase_train, "tokenize": phase_tokenize,
                "sample": phase_sample}


def child_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanoslm.bench", description="one benchmark phase (internal)")
    parser.add_argument("--phase", choices=sorted(_PHASE_FUNCS), required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.dup2(2, 1)  # stdout belongs to the parent's JSON: anything a phase prints goes to stderr
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    try:
        out = {"result": _PHASE_FUNCS[args.phase](spec)}
    except UserError as err:
        out = {"error": str(err)}
    if out.get("result", ...) is None:  # a torchrun rank other than 0: rank 0 reports
        return
    Path(args.out).write_text(json.dumps(out), encoding="utf-8")
    if "error" in out:
        sys.exit(2)
