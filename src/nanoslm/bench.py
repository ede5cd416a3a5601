"""Benchmark: training speed against a plain PyTorch loop, MFU, peak memory, tokenize and sampling speed.

    nanoslm bench [--preset tiny] [--steps 10] [--json] [--only train,tokenize,sample]

Phases, each in its own Python process (`python -m nanoslm.bench --phase NAME`), because peak RSS is a
process-lifetime high-water mark and glibc malloc tuning (hardware.keep_freed_memory) is process-wide
and cannot be undone; so every phase's peak RSS is its own and the reference loop runs untuned:

- reference: a plain loop (fp32, no autocast, full logits + F.cross_entropy, torch AdamW, untuned malloc)
- train: the training stage's fast path (hardware.setup, keep_freed_memory, GPT, trainer.optimizer_step)
  on the same initial weights and the same batches, so their losses can be compared step by step
- tokenize: nanoslm.bins.tokenize_split on a generated corpus (default 80 MB, over 10x the shared sample)
- sample: new tokens/s at batch 1 through the generation engine, with and without its KV cache

Nothing here imports torch at module level: the tokenize phase's peak RSS is the tokenizer's alone.
GB means 10^9 bytes.
"""

import argparse
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

from .config import Params
from .tokenizer import N_VOCAB as GPT2_VOCAB
from .errors import UserError

PRESETS = {  # named overrides of params sections; "default" = the params file as it is
    "default": {},
    "tiny": {"model": dict(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0),
             "train": dict(batch_size=4, grad_accum_steps=1)},
    "gpt2-30m": {"model": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0),  # ~30M params, GPUs
                 "train": dict(batch_size=64, grad_accum_steps=1)},
}
PHASES = ("train", "tokenize", "sample")
DEFAULT_STEPS = 10
WARMUP_STEPS = 2  # untimed steps before the timed ones (allocator, caches, torch.compile)
LOSS_TOLERANCE = 1e-2  # nats: fast path vs reference loop at the same step
SAMPLE_NEW_TOKENS = 256
DEFAULT_CORPUS_MB = 80.0  # over 10x the shared sample: tokenize's memory must not grow with the corpus
GB = 1e9


# --------------------------------------------------------------------------------------------- the parent


def apply_preset(params: Params, name: str) -> Params:
    """`params` with preset `name`'s overrides; an unknown name is a UserError."""
    if name not in PRESETS:
        raise UserError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    for section, values in PRESETS[name].items():
        params = params.updated(section, **values)
    return params


def parse_only(text: str) -> tuple[str, ...]:
    """'train,sample' -> ('train', 'sample'); an unknown phase is a UserError."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in PHASES]
    if bad or not names:
        raise UserError(f"--only: unknown phase {bad[0] if bad else text!r}; use a comma-separated list of "
                        f"{', '.join(PHASES)}")
    return names


def flops_per_token(cfg, n_params_non_embedding: int) -> int:
    """Training FLOPs per token (forward + backward) of a GPT with config `cfg`:

        6 * (N + n_embd * vocab_size) + 12 * n_layer * n_embd * block_size

    N is the parameter count outside the two embedding tables; n_embd * vocab_size is the LM head's
    matmul (tied to the token embedding, so not in N). Each weight costs 2 FLOPs per token forward and
    4 backward. The last term is attention's QK^T and AV (2 * 2 * n_embd * block_size per token and layer
    forward, x3 with backward), counted over the full block as nanoGPT and PaLM do.
    """
    return (6 * (n_params_non_embedding + cfg.n_embd * cfg.vocab_size)
            + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size)


def run_bench(params: Params, preset: str = "default", steps: int = DEFAULT_STEPS, only=PHASES,
              tokens_dir=None, corpus=None, corpus_mb: float = DEFAULT_CORPUS_MB,
              sample_tokens: int = SAMPLE_NEW_TOKENS) -> dict:
    """Run the benchmark phases in `only`, each in its own process; return one JSON-able dict.

    tokens_dir: a tokenized data directory (train.bin + meta.json) to draw training batches from; None or
    a directory without them = random token ids. corpus: a .txt file in the hub's layout whose stories
    seed the tokenize corpus; None = generated TinyStories-like text.
    """
    params = apply_preset(params, preset)
    only = parse_only(only if isinstance(only, str) else ",".join(only))
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if corpus_mb <= 0:
        raise UserError(f"--tokenize-corpus-mb must be positive, got {corpus_mb}")
    tokens = _check_tokens_dir(tokens_dir, params.model.block_size) if "train" in only else None
    spec = {"params": dataclasses.asdict(params), "steps": steps, "tokens_dir": tokens,
            "sample_tokens": sample_tokens}
    result: dict = {"preset": preset, "device": "cpu", "dtype": None,
                    "threads": params.hardware.threads or os.cpu_count(), "steps": steps, "warmup_steps": WARMUP_STEPS}

    if "train" in only:
        # The reference loop runs first, in its own process: malloc tuning (keep_freed_memory, which the
        # fast path calls) is process-wide and can't be undone, and must not speed up the reference.
        reference = _run_phase("reference", spec)
        train = _run_phase("train", spec)
        shared = ("device", "torch", "model", "data", "tokens_per_step")
        result.update({key: train.pop(key) for key in shared}, dtype=train["dtype"])
        for key in shared:
            reference.pop(key)
        result["train"], result["reference"] = train, reference
        first = abs(train["losses"][0] - reference["losses"][0])
        last = abs(train["losses"][-1] - reference["losses"][-1])
        result.update(
            speedup_vs_reference=train["tokens_per_sec"] / reference["tokens_per_sec"],
            peak_rss_gb=train["peak_rss_gb"],
            mfu=train["mfu"], achieved_tflops=train["achieved_tflops"], peak_tflops=train["peak_tflops"],
            loss_diff=max(first, last), loss_diff_first=first, loss_diff_last=last,
            numerics_ok=bool(max(first, last) <= LOSS_TOLERANCE),
        )
    if "tokenize" in only:
        result["tokenize"] = _bench_tokenize(params, corpus, corpus_mb)
    if "sample" in only:
        result["sample"] = _run_phase("sample", spec)
        result["device"] = result["sample"].pop("device")
        result["dtype"] = result["dtype"] or result["sample"]["dtype"]
    return result


def _check_tokens_dir(tokens_dir, block_size: int) -> typing.Optional[str]:
    """tokens_dir as a string if it holds a usable train split, else None (random tokens)."""
    if tokens_dir is None or not (Path(tokens_dir) / "meta.json").is_file():
        return None
    from . import bins

    data = bins.load_split(tokens_dir, "train")
    if len(data) <= block_size + 1:
        raise UserError(f"{tokens_dir}: the train split has {len(data)} tokens, too few for model.block_size "
                        f"{block_size}; pass a bigger tokenized split or none (random tokens)")
    return str(Path(tokens_dir).resolve())


def _bench_tokenize(params: Params, corpus, corpus_mb: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="nanoslm-bench-") as tmp:
        txt = Path(tmp) / "train.txt"
        _log(f"bench: writing a {corpus_mb:g} MB corpus for tokenize "
             f"({'stories of ' + str(corpus) if corpus else 'generated stories'})")
        write_corpus(txt, int(corpus_mb * 1e6), corpus)
        spec = {"params": dataclasses.asdict(params), "txt": str(txt), "bin": str(Path(tmp) / "train.bin")}
        return _run_phase("tokenize", spec)


def _run_phase(phase: str, spec: dict) -> dict:
    """Run one phase in a fresh `python -m nanoslm.bench --phase PHASE` and return its result."""
    _log(f"bench: {phase} ...")
    env = dict(os.environ)
    if phase == "reference":  # the plain loop: no malloc tuning from the environment either
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    with tempfile.TemporaryDirectory(prefix="nanoslm-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "nanoslm.bench", "--phase", phase, "--spec", str(spec_path),
                               "--out", str(out_path)], env=env, stdin=subprocess.DEVNULL)
        out = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {}
    if "error" in out:
        raise UserError(out["error"])
    if proc.returncode != 0 or "result" not in out:
        raise RuntimeError(f"benchmark phase {phase!r} failed (exit status {proc.returncode}); see its output above")
    return out["result"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- the corpus

_NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Sue", "Tim", "Lucy", "Jack", "Emma", "Leo", "Zoe",
          "Bob", "Kitty", "Spot", "Daisy", "Timmy", "Sara"]
_CREATURES = ["cat", "dog", "bird", "bunny", "frog", "bear", "duck", "fish", "mouse", "puppy", "lion", "owl"]
_THINGS = ["ball", "kite", "cake", "box", "hat", "toy car", "red balloon", "book", "flower", "shiny rock", "boat",
           "blanket", "cookie", "drum", "truck", "doll"]
_PLACES = ["park", "garden", "forest", "beach", "big house", "school", "river", "farm", "store", "hill", "pond"]
_ADJS = ["big", "little", "happy", "sad", "funny", "kind", "brave", "shy", "silly", "pretty", "old", "fast"]
_FEELINGS = ["happy", "sad", "scared", "excited", "proud", "angry", "sorry", "surprised", "tired", "glad"]
_VERBS = ["play", "run", "jump", "sing", "dance", "swim", "climb", "look", "share", "help", "build", "draw"]
_SENTENCES = [
    "One day, {name} went to the {place} with {mom}.",
    "{name} saw a {adj} {creature} near the {place}.",
    "The {creature} wanted to {verb} with the {thing}.",
    "\u201cCan I {verb} with you?\u201d asked {name}.",
    "\u201cYes, you can!\u201d said the {creature} with a smile.",
    "They liked to {verb} and {verb2} all day long.",
    "{name} felt {feeling} because the {thing} was lost.",
    "Then, {friend} came and helped {name} find the {thing}.",
    "It was under a {adj} tree in the {place}.",
    "{name} said, \"Thank you, {friend}. You are a good friend.\"",
    "The sun was warm and the sky was blue.",
    "{name} learned that it is good to {verb} and to be {adj2}.",
    "Every day, {name} and {friend} went to the {place} to {verb}.",
    "But then, a big wind came and took the {thing} away.",
    "{name} was very {feeling}, but {name} did not give up.",
    "{mom} gave {name} a hug and said, \"I love you.\"",
]
_OPENINGS = ["Once upon a time, there was a {adj} {creature} named {name}.",
             "Once upon a time, there was a little girl named {name}. She had a {adj} {thing}.",
             "One day, a little boy named {name} found a {thing} in the {place}.",
             "{name} was a {adj} {creature} who lived in a {place}."]
_ENDINGS = ["From that day on, {name} and {friend} were best friends.", "And they all lived happily ever after.",
            "{name} went home and had a nice nap. The end.", "They played together until the sun went down."]


def generated_stories(seed: int = 0) -> typing.Iterator[str]:
    """An endless stream of simple, varied, TinyStories-like stories (deterministic for a seed)."""
    rng = random.Random(seed)
    choice = rng.choice
    while True:
        name = choice(_NAMES)
        fill = dict(name=name, friend=choice([n for n in _NAMES if n != name]), mom=choice(["Mom", "Dad", "Grandma"]),
                    creature=choice(_CREATURES), thing=choice(_THINGS), place=choice(_PLACES), adj=choice(_ADJS),
                    adj2=choice(_ADJS), feeling=choice(_FEELINGS), verb=choice(_VERBS), verb2=choice(_VERBS))
        paragraphs = [[choice(_OPENINGS)]]
        for _ in range(rng.randint(2, 4)):
            paragraphs.append([choice(_SENTENCES) for _ in range(rng.randint(3, 6))])
        paragraphs[-1].append(choice(_ENDINGS))
        yield "\n".join(" ".join(p) for p in paragraphs).format(**fill)


def write_corpus(path, target_bytes: int, seed_txt=None) -> int:
    """Write at least target_bytes of stories in the hub's .txt layout; return the bytes written.

    seed_txt: a hub-layout .txt file whose stories are cycled through; None = generated stories.
    Streams: memory stays flat whatever the size.
    """
    from .sources import SEPARATOR, iter_txt_stories

    def stories():
        if seed_txt is None:
            yield from generated_stories()
            return
        if not Path(seed_txt).is_file():
            raise UserError(f"--corpus {seed_txt}: file not found")
        while True:
            empty = True
            for story in iter_txt_stories(seed_txt):
                empty = False
                yield story
            if empty:
                raise UserError(f"--corpus {seed_txt}: no stories in it (hub .txt layout expected)")

    written = 0
    with open(path, "wb") as f:
        for story in stories():
            chunk = f"{story}\n{SEPARATOR}\n".encode("utf-8")
            f.write(chunk)
            written += len(chunk)
            if written >= target_bytes:
                break
    return written


# --------------------------------------------------------------------------------------- the phases (children)


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
    """Hardware, the seeded model and every step's window offsets: identical for both loops."""
    import numpy as np
    import torch

    from . import bins, hardware
    from .model import GPT
    from .batches import random_offsets

    params = _params_from_dict(spec["params"])
    tc, cfg = params.train, params.model
    hw = hardware.setup(params.hardware)
    if not fast:
        # a plain loop: fp32 matmuls at full precision (no TF32 / reduced-precision fp32 from setup)
        torch.set_float32_matmul_precision("highest")
    elif hw.device_type == "cpu":
        hardware.keep_freed_memory()  # as the train stage does; this process only
    if spec["tokens_dir"]:
        data = bins.load_split(spec["tokens_dir"], "train")
    else:
        data = np.random.default_rng(tc.seed + 2).integers(0, GPT2_VOCAB, size=max(1 << 20, 4 * cfg.block_size),
                                                           dtype=np.uint16)
    torch.manual_seed(tc.seed)
    model = GPT(cfg).to(hw.device)  # built on the CPU from the seed, then moved: same weights in both loops
    model.train()
    sampler = np.random.default_rng(tc.seed)
    total = WARMUP_STEPS + spec["steps"]
    offsets = [random_offsets(sampler, data, tc.grad_accum_steps * tc.batch_size, cfg.block_size)
               .reshape(tc.grad_accum_steps, tc.batch_size) for _ in range(total)]  # as the trainer draws them
    return params, hw, model, data, offsets


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


def _train_result(params, hw, model, data, spec, losses, seconds) -> dict:
    import torch

    cfg, tc = params.model, params.train
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * cfg.block_size
    tokens_per_sec = spec["steps"] * tokens_per_step / seconds
    n_non_embedding = model.num_params(embeddings=False)
    fpt = flops_per_token(cfg, n_non_embedding)
    result = {
        "device": str(hw.device), "torch": torch.__version__, "dtype": _dtype_name(hw.dtype),
        "tokens_per_step": tokens_per_step,
        "data": spec["tokens_dir"] or f"random token ids ({len(data):,})",
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
    """The plain loop: fp32, no autocast, full logits + F.cross_entropy, torch AdamW, untuned malloc."""
    import torch
    import torch.nn.functional as F

    from .batches import windows
    from .trainer import lr_at

    params, hw, model, data, offsets = _train_setup(spec, fast=False)
    tc, cfg = params.train, params.model
    optimizer = model.optimizer(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))  # torch's default AdamW kernel

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
    result = _train_result(params, hw, model, data, spec, losses, seconds)
    result["dtype"] = "float32"
    return result


def phase_train(spec: dict) -> dict:
    """The train stage's fast path on the same weights and batches, plus the device's measured peak FLOP/s."""
    import torch

    from .batches import windows
    from .trainer import lr_at, maybe_compile, optimizer_step

    params, hw, model, data, offsets = _train_setup(spec, fast=True)
    tc, cfg = params.train, params.model
    optimizer = model.optimizer(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), fused=hw.device_type == "cuda")
    scaler = torch.amp.GradScaler(hw.device_type, enabled=hw.dtype == torch.float16)
    forward = maybe_compile(model, params.hardware.compile)

    def step_fn(step):
        micro_batches = (windows(data, o, cfg.block_size, hw.device) for o in offsets[step])
        return optimizer_step(forward, optimizer, scaler, micro_batches, lr_at(step, tc), tc.grad_clip, hw)

    losses, seconds = _timed_loop(step_fn, len(offsets), hw.device)
    result = _train_result(params, hw, model, data, spec, losses, seconds)
    result["compile"] = forward is not model
    del optimizer, model, forward
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
    """nanoslm.bins.tokenize_split on the corpus, with the params' threads and batch size."""
    from .bins import tokenize_split
    from .tokenizer import get_encoding

    params = _params_from_dict(spec["params"])
    enc = get_encoding(params.tokenizer.name)
    nbytes = Path(spec["txt"]).stat().st_size
    start = time.perf_counter()
    stats = tokenize_split(spec["txt"], spec["bin"], enc, params.tokenizer.batch_stories, params.hardware.threads)
    seconds = time.perf_counter() - start
    return {"corpus_mb": nbytes / 1e6, "stories": stats["stories"], "tokens": stats["tokens"], "seconds": seconds,
            "mb_per_sec": nbytes / 1e6 / seconds, "tokens_per_sec": stats["tokens"] / seconds,
            "threads": params.hardware.threads or os.cpu_count(), "peak_rss_gb": peak_rss_gb()}


def generate_tokens(model, prompt: list[int], max_new_tokens: int, sample_cfg, hw, use_cache: bool) -> int:
    """Sample up to max_new_tokens after `prompt` at batch 1 with the KV cache on or off; return how many came.

    The only place that knows the generation API (nanoslm.engine). eot=-1 matches no id, so a random
    model never stops early. The engine casts a bfloat16 device's model to bfloat16 in place, as sampling does.
    """
    import torch

    from .engine import Engine, Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=sample_cfg.temperature, top_k=sample_cfg.top_k,
                        top_p=sample_cfg.top_p)
    generator = torch.Generator().manual_seed(sample_cfg.seed)
    (new,) = Engine(model, hw, eot=-1).generate([prompt], sampling, [generator], use_cache=use_cache)
    return len(new)


def phase_sample(spec: dict) -> dict:
    """New tokens/s at batch 1 for the preset's model (random weights: speed doesn't depend on them)."""
    import torch

    from . import hardware
    from .model import GPT
    from .tokenizer import get_encoding

    params = _params_from_dict(spec["params"])
    hw = hardware.setup(params.hardware)
    torch.manual_seed(params.train.seed)
    model = GPT(params.model).to(hw.device).eval()
    prompt = get_encoding(params.tokenizer.name).encode_ordinary(params.sample.prompts[0])
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


def _child_main(argv=None) -> None:
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
    Path(args.out).write_text(json.dumps(out), encoding="utf-8")
    if "error" in out:
        sys.exit(2)


# -------------------------------------------------------------------------------------------- the report


def format_table(r: dict) -> str:
    """The result as a readable table."""
    rows = [("phase", "speed", "peak RSS", "notes")]

    def mem(section):
        text = f"{section['peak_rss_gb']:.2f} GB"
        return text + (f" (CUDA {section['peak_cuda_gb']:.2f} GB)" if "peak_cuda_gb" in section else "")

    head = f"nanoslm bench: preset {r['preset']}, {r['device']}"
    if r.get("dtype"):
        head += f", {r['dtype']}"
    head += f", threads: {r['threads']}" if r["device"] == "cpu" else ""
    if "train" in r:
        m, t, ref = r["model"], r["train"], r["reference"]
        head += (f"; {m['params'] / 1e6:.1f}M params ({m['params_non_embedding'] / 1e6:.1f}M outside embeddings), "
                 f"{m['n_layer']}x{m['n_embd']}, block {m['block_size']}, {r['tokens_per_step']:,} tokens/step, "
                 f"{r['steps']} timed steps after {r['warmup_steps']} warm-up")
        rows.append(("train (fast path)", f"{t['tokens_per_sec']:,.0f} tok/s", mem(t),
                     f"{t['step_ms']:,.0f} ms/step; {r['achieved_tflops']:.3f} TFLOP/s = MFU {100 * r['mfu']:.1f}% "
                     f"of {r['peak_tflops']:.3f} ({t['peak_matmul']} matmul)"))
        rows.append(("reference (fp32)", f"{ref['tokens_per_sec']:,.0f} tok/s", mem(ref),
                     f"{ref['step_ms']:,.0f} ms/step; plain loop, full logits"))
        rows.append(("speedup", f"{r['speedup_vs_reference']:.2f}x", "",
                     f"loss diff {r['loss_diff']:.4f} nats (first {r['loss_diff_first']:.4f}, last "
                     f"{r['loss_diff_last']:.4f}): {'ok' if r['numerics_ok'] else 'TOO LARGE'} (<= {LOSS_TOLERANCE})"))
    if "tokenize" in r:
        t = r["tokenize"]
        rows.append(("tokenize", f"{t['mb_per_sec']:.1f} MB/s, {t['tokens_per_sec'] / 1e6:.2f}M tok/s", mem(t),
                     f"{t['corpus_mb']:.1f} MB corpus, {t['tokens']:,} tokens, {t['threads']} threads"))
    if "sample" in r:
        s = r["sample"]
        note = (f"batch 1, {s['new_tokens']} new tokens, KV cache (without: {s['tokens_per_sec_no_cache']:,.1f} "
                f"tok/s, so the cache gives {s['kv_cache_speedup']:.2f}x)")
        rows.append(("sample", f"{s['tokens_per_sec']:,.1f} tok/s", mem(s), note))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head, ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    _child_main()
