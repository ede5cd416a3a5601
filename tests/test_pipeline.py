"""End to end: the real dvc.yaml in a throwaway git repo, on a generated corpus with tiny params."""

import json
import math
import subprocess
import sys

import pytest

from conftest import dvc_project


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def collect(node, found):
    """(n_layer, val_loss) of every revision in `dvc exp show --json` output."""
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "metrics" in data:
            val = data["metrics"].get("metrics/eval.json", {}).get("data", {}).get("val_loss")
            n_layer = data["params"]["params.yaml"]["data"]["model"]["n_layer"]
            found.append((node.get("name") or node.get("rev"), n_layer, val))
        for value in node.values():
            collect(value, found)
    elif isinstance(node, list):
        for value in node:
            collect(value, found)
    return found


@pytest.fixture
def project(tmp_path):
    return dvc_project(tmp_path, dict(max_iters=10, lr_decay_iters=10, eval_interval=5, log_interval=5),
                       sample_tokens=8)


def test_repro_then_experiment(project):
    repo, env = project
    dvc = [sys.executable, "-m", "dvc"]

    run(dvc + ["repro"], repo, env)
    for out in ("metrics/eval.json", "plots/loss.png", "samples/stories.md", "models/best.pt", "models/last.pt",
                "dvclive/plots/metrics/train/loss.tsv", "dvclive/plots/metrics/val/loss.tsv",
                "dvclive/plots/metrics/val/bpb.tsv", "models/model.gguf"):
        assert (repo / out).is_file(), out
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert {"val_loss", "perplexity", "bits_per_byte", "tokens"} <= metrics.keys()
    assert "Once upon a time there was a pumpkin." in (repo / "samples/stories.md").read_text()
    # requests -> finetune -> instruct: a tuned model asked for held-out stories, its checks beside chance's
    instruct = json.loads((repo / "metrics/instruct.json").read_text())
    assert instruct["requests"] > 0 and instruct["seeds"] == [0, 1]
    for side in ("model", "chance"):
        assert {"words", "all_words", "finished"} <= instruct[side].keys(), instruct
        assert all(0 <= v <= 1 for k, v in instruct[side].items() if k != "requests")
    assert 0 <= instruct["copy"]["copied"] <= 1 and math.isfinite(instruct["plain_bits_per_byte"])
    assert (repo / "models/tuned/best.pt").is_file() and (repo / "plots/tuned-loss.png").is_file()

    assert "up to date" in run(dvc + ["repro"], repo, env)  # nothing changed: nothing reruns

    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline run"], repo, env)
    run(dvc + ["exp", "run", "-S", "model.n_layer=1"], repo, env)

    rows = collect(json.loads(run(dvc + ["exp", "show", "--json"], repo, env)), [])
    by_layers = {n_layer: (name, val) for name, n_layer, val in rows if val is not None}
    assert set(by_layers) == {1, 2}, rows
    assert all(math.isfinite(val) for _, val in by_layers.values())
    exp_name = next(name for name, n_layer, _ in rows if n_layer == 1 and name not in ("workspace", "main"))

    plots = json.loads(run(dvc + ["plots", "diff", "main", exp_name, "--json"], repo, env))["data"]
    (loss,) = plots["loss"]  # the top-level plot overlaying train and val loss
    points = loss["content"]["data"]["values"]
    assert {(p["rev"], p["filename"]) for p in points} == {
        (rev, f"{split}/loss.tsv") for rev in ("main", exp_name) for split in ("train", "val")}
    assert all(math.isfinite(float(p["loss"])) for p in points)

    # back to the baseline's params: train reruns (its persist outputs keep DVC's run cache off), starts
    # fresh because last.pt belongs to the other experiment, and gives the same best.pt bytes, so DVC's
    # run cache restores evaluate instead of rerunning it
    run(["git", "checkout", "--", "params.yaml"], repo, env)
    result = subprocess.run(dvc + ["repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "params changed since it was saved (model.n_layer: 1 -> 2); starting fresh" in result.stderr
    assert "Stage 'evaluate' is cached" in result.stdout, result.stdout
