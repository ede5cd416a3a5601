"""Benchmark: training speed against a plain PyTorch loop, MFU, peak memory, tokenize and sampling speed.

    nanoslm bench [--preset tiny] [--steps 10] [--json] [--only train,tokenize,sample]

Phases, each in its own Python process (`python -m nanoslm.bench --phase NAME`), because peak RSS is a
process-lifetime high-water mark and glibc malloc tuning (hardware.keep_freed_memory) is process-wide
and cannot be undone; so every phase's peak RSS is its own and the reference loop runs untuned:

- reference: the plain loop a nanoGPT user runs (GPT-2's full 50,257-id vocabulary, fp32, no autocast,
  full logits + F.cross_entropy, torch AdamW, untuned malloc), same layers, width, batch and block;
  speedup_vs_reference is the fast path against it. When the params' vocabulary is another size, a
  second reference runs at the params' vocabulary: speedup_same_vocab (= speedup_vs_reference otherwise).
- train: the training stage's fast path with the params as they are (hardware.setup, keep_freed_memory,
  GPT, train.optimizer, torch.compile, train.optimizer_step) on the same-vocabulary reference's initial
  weights and batches, so with AdamW their losses can be compared step by step (numerics_ok)
- tokenize: nanoslm.tokenization.tokenize_split on a generated corpus (default 80 MB, over 10x the shared sample)
- sample: new tokens/s at batch 1 through the generation engine, with and without its KV cache

Nothing here imports torch at module level: the tokenize phase's peak RSS is the tokenizer's alone.
GB means 10^9 bytes.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

from ..config import Params, cpu_threads
from ..gpt2 import N_VOCAB as GPT2_VOCAB
from ..errors import UserError
from .corpus import write_corpus
from .report import format_table

__all__ = ["PRESETS", "PHASES", "apply_preset", "parse_only", "run_bench", "format_table", "write_corpus"]

PRESETS = {  # named overrides of params sections; "default" = the params file as it is
    "default": {},
    "tiny": {"model": dict(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0),
             "train": dict(batch_size=4, grad_accum_steps=1)},
    "gpt2-30m": {"model": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0),  # GPUs; 10.6M outside embeddings
                 "train": dict(batch_size=64, grad_accum_steps=1)},
}
PHASES = ("train", "tokenize", "sample")
DEFAULT_STEPS = 10
WARMUP_STEPS = 2  # untimed steps before the timed ones (allocator, caches, torch.compile)
LOSS_TOLERANCE = 1e-2  # nats: fast path vs reference loop at the same step
SAMPLE_NEW_TOKENS = 256
DEFAULT_CORPUS_MB = 80.0  # over 10x the shared sample: tokenize's memory must not grow with the corpus
GB = 1e9


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
                    "threads": cpu_threads(params.hardware.threads), "processes": params.hardware.nproc_per_node,
                    "steps": steps, "warmup_steps": WARMUP_STEPS}

    if "train" in only:
        result.update(_bench_train(params, spec))
    if "tokenize" in only:
        result["tokenize"] = _bench_tokenize(params, corpus, corpus_mb)
    if "sample" in only:
        result["sample"] = _run_phase("sample", spec)
        result["device"] = result["sample"].pop("device")
        result["dtype"] = result["dtype"] or result["sample"]["dtype"]
    return result


def _bench_train(params: Params, spec: dict) -> dict:
    """The fast path against the reference loop at GPT-2's full vocabulary and, if it differs, at the params' own.

    The loss comparison (numerics_ok) is like with like: the same-vocabulary reference against the fast path,
    and only when the fast path uses AdamW too (with Muon the losses differ by design: null).
    """
    # The reference loops run first, each in its own process: malloc tuning (keep_freed_memory, which the
    # fast path calls) is process-wide and can't be undone, and must not speed up a reference.
    vocab = params.model.vocab_size
    reference = _run_phase("reference", {**spec, "vocab_size": GPT2_VOCAB})
    same_vocab = reference if vocab == GPT2_VOCAB else _run_phase("reference", {**spec, "vocab_size": vocab})
    train = _run_phase("train", spec, processes=params.hardware.nproc_per_node)
    out = {key: train.pop(key) for key in ("device", "torch", "model", "data", "tokens_per_step")}
    for ref in (reference, same_vocab):
        for key in ("device", "torch", "tokens_per_step"):
            ref.pop(key, None)
    out.update(train=train, reference=reference, dtype=train["dtype"],
               speedup_vs_reference=train["tokens_per_sec"] / reference["tokens_per_sec"],
               speedup_same_vocab=train["tokens_per_sec"] / same_vocab["tokens_per_sec"],
               peak_rss_gb=train["peak_rss_gb"], mfu=train["mfu"], achieved_tflops=train["achieved_tflops"],
               peak_tflops=train["peak_tflops"], loss_tolerance=LOSS_TOLERANCE)
    if same_vocab is not reference:
        out["reference_same_vocab"] = same_vocab
    if params.train.optimizer == "adamw":
        first = abs(train["losses"][0] - same_vocab["losses"][0])
        last = abs(train["losses"][-1] - same_vocab["losses"][-1])
        out.update(loss_diff=max(first, last), loss_diff_first=first, loss_diff_last=last,
                   numerics_ok=bool(max(first, last) <= LOSS_TOLERANCE),
                   numerics_note=f"fast path vs the fp32 AdamW reference at {vocab:,} ids, same weights and batches")
    else:
        out.update(loss_diff=None, loss_diff_first=None, loss_diff_last=None, numerics_ok=None,
                   numerics_note=f"not compared: the fast path uses train.optimizer {params.train.optimizer}, the "
                                 f"reference AdamW, so their losses differ by design")
    return out


def _check_tokens_dir(tokens_dir, block_size: int) -> typing.Optional[str]:
    """tokens_dir as a string if it holds a usable train split, else None (random tokens)."""
    if tokens_dir is None or not (Path(tokens_dir) / "meta.json").is_file():
        return None
    from ..tokens import load_split

    load_split(tokens_dir, "train", block_size)  # the train stage's own checks
    return str(Path(tokens_dir).resolve())


def _bench_tokenize(params: Params, corpus, corpus_mb: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="nanoslm-bench-") as tmp:
        txt = Path(tmp) / "train.txt"
        _log(f"bench: writing a {corpus_mb:g} MB corpus for tokenize "
             f"({'stories of ' + str(corpus) if corpus else 'generated stories'})")
        write_corpus(txt, int(corpus_mb * 1e6), corpus)
        spec = {"params": dataclasses.asdict(params), "txt": str(txt), "bin": str(Path(tmp) / "train.bin")}
        return _run_phase("tokenize", spec)


def _run_phase(phase: str, spec: dict, processes: int = 1) -> dict:
    """Run one phase in a fresh `python -m nanoslm.bench --phase PHASE` (under torchrun with processes > 1) and
    return its result."""
    _log(f"bench: {phase} ...")
    env = dict(os.environ)
    if phase == "reference":  # the plain loop: no malloc tuning from the environment either
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    with tempfile.TemporaryDirectory(prefix="nanoslm-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                    if processes > 1 else [sys.executable])
        proc = subprocess.run([*launcher, "-m", "nanoslm.bench", "--phase", phase, "--spec", str(spec_path),
                               "--out", str(out_path)], env=env, stdin=subprocess.DEVNULL)
        out = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {}
    if "error" in out:
        raise UserError(out["error"])
    if proc.returncode != 0 or "result" not in out:
        raise RuntimeError(f"benchmark phase {phase!r} failed (exit status {proc.returncode}); see its output above")
    return out["result"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
