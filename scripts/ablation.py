"""The ablation in docs/experiments.md: each lever of the default recipe turned off (or on) alone, at a fixed token
budget and at a fixed wall budget, each row a `dvc exp run` of the pipeline itself.

    python scripts/ablation.py --source ../shared/data/tinystories --steps 200 --wall 240 --out ablation.json

Each row is `dvc exp run --temp -n NAME -S ...` in a temporary workspace (yours is left as it is), one at a time so
rows do not share the cores, with a fresh torch.compile cache so compiling counts in its time. DVC's run cache
restores download and tokenize after the first row. A row reports its pipeline wall (the stages that ran:
download and tokenize only when not cached; train, evaluate, sample, export), the last log interval's training
tokens/s (dvclive's metrics.json), the largest process's peak RSS, and the whole-split validation bits/byte
(metrics/eval.json). The fixed-wall rows give each row as many steps as its fixed-token run's speed fits in --wall
seconds of pipeline wall. Every row stays an experiment: `dvc exp show` lists them, `dvc exp apply NAME` takes one.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from nanoslm.config import load_params

# (row name, -S overrides of params.yaml); a lever that is on by default appears turned off, and the other way round.
# All of them off at once is `nanoslm bench`'s reference loop.
ROWS = [
    ("default recipe", {}),
    ("full GPT-2 vocabulary (50,257 ids)", {"tokenizer.vocab_size": 50257, "model.vocab_size": 50257}),
    ("AdamW instead of Muon", {"train.optimizer": "adamw"}),
    ("no torch.compile", {"hardware.compile": "false"}),
    ("float32 instead of bf16", {"hardware.dtype": "float32"}),
    ("schedule wsd instead of cosine", {"train.schedule": "wsd"}),
    ("dropout 0.1", {"model.dropout": 0.1}),
    ("windows at random, with replacement", {"train.windows": "random"}),
]


def dvc_command(name: str, overrides: dict) -> list[str]:
    """The row's `dvc exp run` argv: a temporary workspace, the experiment named, every override as -S."""
    return ["dvc", "exp", "run", "--temp", "-n", name] + [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]


def measured(argv: list[str]) -> None:
    """Run argv (the child of run_row), then print its wall seconds and its largest descendant's peak RSS."""
    start = time.perf_counter()
    code = subprocess.run(argv).returncode
    seconds = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB on Linux
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_gb": rss_gb}))


def experiment_file(name: str, path: str) -> dict:
    """A JSON file as experiment `name` committed it (metrics files are git-tracked outputs of its stages)."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.split()
    ref = next(r for r in refs if r.rsplit("/", 1)[-1] == name)
    return json.loads(subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True,
                                     check=True).stdout)


def run_row(name: str, overrides: dict, budget: str) -> dict:
    """One row through the pipeline in a child process of its own (so its peak RSS is its own)."""
    argv = dvc_command(name, overrides)
    print("==", " ".join(argv), file=sys.stderr)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        child = subprocess.run([sys.executable, __file__, "--measure", json.dumps(argv)], env=env,
                               stdout=subprocess.PIPE, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if child.returncode or result["code"]:
        sys.exit(f"error: row {name!r} failed; dvc's message is above")
    scores, live = experiment_file(name, "metrics/eval.json"), experiment_file(name, "dvclive/metrics.json")
    row = {"name": name, "budget": budget, "steps": live["step"], "pipeline_s": round(result["seconds"], 1),
           "steady_tokens_per_s": round(live["tokens_per_sec"]), "peak_rss_gb": round(result["peak_rss_gb"], 3),
           "bits_per_byte": round(scores["bits_per_byte"], 4), "tokenizer": scores["tokenizer"],
           "command": "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in overrides.items())}
    print(json.dumps(row), file=sys.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| lever | budget | steps | pipeline wall (s) | tokens/s (last steps) | peak RSS (GB) | val bits/byte | "
             "command |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['name']} | {r['budget']} | {r['steps']} | {r['pipeline_s']} | {r['steady_tokens_per_s']:,} | "
              f"{r['peak_rss_gb']} | {r['bits_per_byte']} | `{r['command']}` |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--source", help="data.source for every row, e.g. ../shared/data/tinystories")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps of the fixed-token rows")
    ap.add_argument("--wall", type=float, default=240.0, help="seconds of pipeline wall per fixed-wall row; "
                                                              "0 = no fixed-wall rows")
    ap.add_argument("--rows", help="comma-separated row numbers (0 = the default recipe); default: all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a -S override for every row (e.g. model.n_layer=2 for a quick try of the script)")
    ap.add_argument("--out", default="ablation.json")
    args = ap.parse_args()
    if args.measure:
        return measured(json.loads(args.measure))
    if not args.source:
        ap.error("--source is required")
    # a temporary workspace lies elsewhere: a local source must be an absolute path there
    source = os.path.abspath(args.source) if os.path.exists(args.source) else args.source
    common = {"data.source": source, **dict(s.split("=", 1) for s in args.set)}
    run_id = time.strftime("%m%d-%H%M")
    warmup = int(common.get("train.warmup_iters", load_params().train.warmup_iters))
    picked = [(i, *ROWS[i]) for i in map(int, args.rows.split(","))] if args.rows else list(enumerate(ROWS))
    results = []
    for i, name, overrides in picked:
        budget = {**common, **overrides, "train.max_iters": args.steps, "train.lr_decay_iters": args.steps}
        fixed = run_row(f"ablation-{run_id}-{i}-steps", budget, f"{args.steps} steps")
        results.append({**fixed, "name": name})
        if args.wall:
            steps = max(warmup, round(args.steps * args.wall / fixed["pipeline_s"]))  # the schedule's floor
            timed = run_row(f"ablation-{run_id}-{i}-wall", {**budget, "train.max_iters": steps,
                                                             "train.lr_decay_iters": steps}, f"{args.wall:g} s")
            results.append({**timed, "name": name})
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    main()
