"""The README's ablation table: each lever of the default recipe turned off (or on) alone, at a fixed token budget
and at a fixed wall budget.

    python scripts/ablation.py --source ../shared/data/tinystories --steps 300 --wall 150 --out ablation.json

Every row trains params.yaml with its overrides in a child process of its own (fresh torch.compile cache, so
compilation counts in its wall time; "last steps" tokens/s is the final log interval's, compiled), then scores
its best checkpoint on the whole validation split. The fixed wall rows give each row as many steps as its
fixed-token run's speed fits in --wall seconds (compilation included). Each row prints the `dvc exp run`
command that trains the same thing through the pipeline.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nanoslm import bins, evaluate, hardware, sources, trainer
from nanoslm.atomic import write_json
from nanoslm.bench.phases import peak_rss_gb
from nanoslm.config import Params, load_params
from nanoslm.errors import exit_on_user_error

# (row name, overrides of params.yaml); a lever that is on by default appears turned off, and the other way round.
# All of them off at once is `nanoslm bench`'s reference loop.
ROWS = [
    ("default recipe", {}),
    ("full GPT-2 vocabulary (50,257 ids)", {"tokenizer.vocab_size": 50257, "model.vocab_size": 50257}),
    ("AdamW instead of Muon", {"train.optimizer": "adamw"}),
    ("no torch.compile", {"hardware.compile": False}),
    ("float32 instead of bf16", {"hardware.dtype": "float32"}),
    ("schedule wsd instead of cosine", {"train.schedule": "wsd"}),
    ("dropout 0.1", {"model.dropout": 0.1}),
    ("windows at random, with replacement", {"train.windows": "random"}),
]


def with_overrides(params: Params, overrides: dict) -> Params:
    """params with "section.key" overrides applied all at once (so cross-section checks see the final values)."""
    sections = {}
    for key, value in overrides.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(params, **{s: dataclasses.replace(getattr(params, s), **v) for s, v in sections.items()})


def budget(overrides: dict, steps: int) -> dict:
    return {**overrides, "train.max_iters": steps, "train.lr_decay_iters": steps}


def dvc_command(source: str, overrides: dict) -> str:
    sets = {"data.source": source, **overrides}
    return "dvc exp run " + " ".join(f"-S {k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in sets.items())


def run_row(workdir: Path, params_path: str, source: str, name: str, overrides: dict) -> dict:
    """Train and evaluate one row in a child process; its result with wall time, tokens/s and peak RSS."""
    spec = {"params": params_path, "source": source, "overrides": overrides, "workdir": str(workdir)}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        child_run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                                   stdout=subprocess.PIPE, text=True)
    if child_run.returncode:
        sys.exit(f"error: row {name!r} failed (exit status {child_run.returncode}); its message is above")
    result = json.loads(child_run.stdout.strip().splitlines()[-1])
    result.update(name=name, command=dvc_command(source, overrides))
    print(json.dumps(result), file=sys.stderr)
    return result


def child(spec: dict) -> None:
    params = load_params(spec["params"]).updated("data", source=spec["source"])
    params = with_overrides(params, spec["overrides"])
    work = Path(spec["workdir"])
    raw, tokens = work / "raw", work / f"tokens-{params.tokenizer.vocab_size}"
    if not (raw / "validation.txt").is_file():
        sources.download(params.data, raw)
    if not (tokens / "meta.json").is_file():
        bins.tokenize(raw, tokens, params.tokenizer, params.hardware.threads)
    with tempfile.TemporaryDirectory(dir=work) as run:
        run = Path(run)
        start = time.perf_counter()
        trainer.train(params, tokens, run / "models", run / "live", run / "loss.png")
        seconds = time.perf_counter() - start
        train_rss = peak_rss_gb()
        steady = json.loads((run / "live" / "metrics.json").read_text())["tokens_per_sec"]  # last log interval's
        scores = evaluate.evaluate_checkpoint(run / "models" / "best.pt", tokens, params.eval.batch_size,
                                              hardware.setup(params.hardware))
    tc = params.train
    tokens_seen = tc.max_iters * tc.batch_size * tc.grad_accum_steps * params.model.block_size
    print(json.dumps({"steps": tc.max_iters, "tokens": tokens_seen, "train_s": round(seconds, 1),
                      "tokens_per_s": round(tokens_seen / seconds),
                      "steady_tokens_per_s": round(steady), "peak_rss_gb": round(train_rss, 3),
                      "bits_per_byte": round(scores["bits_per_byte"], 4), "tokenizer": scores["tokenizer"]}))


def markdown(rows: list[dict]) -> str:
    lines = ["| lever | budget | steps | train wall (s) | tokens/s (with compiling) | tokens/s (last steps) | "
             "peak RSS (GB) | val bits/byte | command |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['budget']} | {r['steps']} | {r['train_s']} | {r['tokens_per_s']:,} | "
                     f"{r['steady_tokens_per_s']:,} | "
                     f"{r['peak_rss_gb']} | {r['bits_per_byte']} | `{r['command']}` |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--source", required=False, help="data.source for every row, e.g. ../shared/data/tinystories")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of the fixed-token rows")
    ap.add_argument("--wall", type=float, default=150.0, help="seconds of training (compilation included) per "
                                                              "fixed-wall row; 0 = no fixed-wall rows")
    ap.add_argument("--rows", help="comma-separated row numbers (0 = the default recipe); default: all")
    ap.add_argument("--workdir", default="ablation-work", help="tokens shared by the rows (kept for reruns)")
    ap.add_argument("--out", default="ablation.json")
    args = ap.parse_args()
    if args.child:
        with exit_on_user_error():
            return child(json.loads(args.child))
    if not args.source:
        ap.error("--source is required")
    warmup = load_params(args.params).train.warmup_iters  # the schedule's floor on a run's length
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    picked = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    results = []
    for name, overrides in picked:
        fixed = run_row(work, args.params, args.source, name, budget(overrides, args.steps))
        results.append({**fixed, "budget": f"{fixed['tokens']:,} tokens"})
        if args.wall:
            steps = max(warmup, round(args.steps * args.wall / fixed["train_s"]))
            timed = run_row(work, args.params, args.source, name, budget(overrides, steps))
            results.append({**timed, "budget": f"{args.wall:g} s"})
        write_json(args.out, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
