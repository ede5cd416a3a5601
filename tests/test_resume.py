"""Training you can trust: kill it anywhere and it ends where an uninterrupted run ends; same seed, same bytes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO

MAX_ITERS = 40


@pytest.fixture(scope="module")
def tokens(story_tokens) -> Path:
    return story_tokens


def workdir(root: Path, name: str, **changes) -> Path:
    """A directory holding params.yaml (params-ci.yaml, 40 steps, with `changes` as 'section.key': value)."""
    params = yaml.safe_load((REPO / "params-ci.yaml").read_text())
    params["train"].update(max_iters=MAX_ITERS, lr_decay_iters=MAX_ITERS, eval_interval=10, log_interval=5,
                           checkpoint_interval=10)
    params["model"].update(dropout=0.1)  # dropout draws from torch's RNG: resume must restore it
    params["hardware"].update(threads=1, dtype="float32")
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    d = root / name
    d.mkdir()
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    return d


def run_stage(cwd: Path, tokens: Path, stage: str = "train", fault: str | None = None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NANOSLM_FAULT", None)
    if fault:
        env["NANOSLM_FAULT"] = fault
    args = {"train": [str(tokens), "models", "dvclive", "plots/loss.png"],
            "evaluate": ["models/best.pt", str(tokens), "metrics/eval.json"]}[stage]
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def losses(tsv: Path, column: str = "loss") -> list[tuple[str, str]]:
    """(step, value) rows of a dvclive TSV (its timestamp column differs between runs by nature)."""
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    header = rows[0]
    return [(r[header.index("step")], r[header.index(column)]) for r in rows[1:]]


def finished(cwd: Path, tokens: Path) -> dict:
    """What must not depend on interruptions: the loss curves, the final weights and eval.json's bytes."""
    result = run_stage(cwd, tokens, "evaluate")
    assert result.returncode == 0, result.stderr
    return {
        "train": losses(cwd / "dvclive/plots/metrics/train/loss.tsv"),
        "val": losses(cwd / "dvclive/plots/metrics/val/loss.tsv"),
        "val_bpb": losses(cwd / "dvclive/plots/metrics/val/bpb.tsv", "bpb"),
        "eval": (cwd / "metrics/eval.json").read_bytes(),
        "weights": torch.load(cwd / "models/last.pt", weights_only=True)["model"],
    }


def same(a: dict, b: dict) -> None:
    assert a["train"] == b["train"]
    assert a["val"] == b["val"]
    assert a["val_bpb"] == b["val_bpb"]
    assert a["eval"] == b["eval"]
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokens) -> dict:
    """An uninterrupted run."""
    cwd = workdir(tmp_path_factory.mktemp("ref"), "run")
    result = run_stage(cwd, tokens)
    assert result.returncode == 0, result.stderr
    out = finished(cwd, tokens)
    assert len(out["train"]) == MAX_ITERS // 5 and len(out["val"]) == len(out["val_bpb"]) == MAX_ITERS // 10 + 1
    return out


def test_same_seed_gives_byte_identical_results(tmp_path, tokens, reference):
    cwd = workdir(tmp_path, "again")
    assert run_stage(cwd, tokens).returncode == 0
    same(finished(cwd, tokens), reference)


def test_sigkill_twice_then_resume_matches_uninterrupted_run(tmp_path, tokens, reference):
    cwd = workdir(tmp_path, "killed")
    first = run_stage(cwd, tokens, fault="kill@step:17")  # mid log window, 7 steps after the checkpoint at 10
    assert first.returncode == -signal.SIGKILL
    second = run_stage(cwd, tokens, fault="kill@step:33")
    assert second.returncode == -signal.SIGKILL
    assert "resuming from models/last.pt at step 10 of 40" in second.stderr
    third = run_stage(cwd, tokens)
    assert third.returncode == 0, third.stderr
    assert "resuming from models/last.pt at step 30 of 40" in third.stderr
    same(finished(cwd, tokens), reference)


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(tmp_path, tokens, reference):
    cwd = workdir(tmp_path, "interrupted")
    first = run_stage(cwd, tokens, fault="interrupt@step:12")
    assert first.returncode == 130, first.stderr
    assert "interrupted at step 13; checkpoint saved" in first.stderr
    assert torch.load(cwd / "models/last.pt", weights_only=True)["step"] == 13
    second = run_stage(cwd, tokens)
    assert second.returncode == 0, second.stderr
    assert "resuming from models/last.pt at step 13 of 40" in second.stderr
    same(finished(cwd, tokens), reference)


def test_changed_params_start_fresh_with_a_message(tmp_path, tokens):
    cwd = workdir(tmp_path, "changed")
    assert run_stage(cwd, tokens, fault="kill@step:17").returncode == -signal.SIGKILL
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["model"]["n_layer"] = 1
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(cwd, tokens)
    assert result.returncode == 0, result.stderr
    assert "params changed since it was saved (model.n_layer: 2 -> 1); starting fresh" in result.stderr
    assert "resuming" not in result.stderr


def test_a_finished_run_is_not_resumed(tmp_path, tokens):
    cwd = workdir(tmp_path, "done")
    assert run_stage(cwd, tokens).returncode == 0
    again = run_stage(cwd, tokens)
    assert again.returncode == 0
    assert "that run finished (step 40); starting fresh" in again.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_is_moved_aside_and_training_starts_fresh(tmp_path, tokens, reference, damage):
    cwd = workdir(tmp_path, damage)
    assert run_stage(cwd, tokens, fault="kill@step:17").returncode == -signal.SIGKILL
    last = cwd / "models/last.pt"
    damaged = last.read_bytes()[: last.stat().st_size // 2] if damage == "truncate" else b"\x00garbage" * 100
    last.write_bytes(damaged)
    result = run_stage(cwd, tokens)  # what `dvc repro --force train` runs
    assert result.returncode == 0, result.stderr
    assert ("models/last.pt: not a readable checkpoint (truncated or corrupt); train a new one: dvc repro --force "
            "train (cause: ") in result.stderr
    assert "; moved it to models/last.pt.damaged and starting fresh" in result.stderr
    assert "resuming" not in result.stderr
    assert (cwd / "models/last.pt.damaged").read_bytes() == damaged
    same(finished(cwd, tokens), reference)  # a fresh start is the uninterrupted run


def test_a_checkpoint_holding_pickled_code_is_refused_not_moved(tmp_path, tokens):
    cwd = workdir(tmp_path, "pickled")
    assert run_stage(cwd, tokens, fault="kill@step:17").returncode == -signal.SIGKILL
    last = cwd / "models/last.pt"
    state = torch.load(last, weights_only=True)
    state["extra"] = Path("anything")  # a Python object: weights_only refuses it
    torch.save(state, last)
    result = run_stage(cwd, tokens)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: models/last.pt: refused to load it, because it holds Python objects (pathlib.")
    assert line.endswith("could run code. Use a checkpoint written by Nano-SLM, or train a new one: "
                         "dvc repro --force train")
    assert last.is_file() and not (cwd / "models/last.pt.damaged").exists()


def test_muon_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tokens):
    """Muon's momentum buffers are in last.pt too (and the wsd schedule resumes like the cosine)."""
    recipe = {"train.optimizer": "muon", "train.muon_lr": 0.02, "train.schedule": "wsd"}
    uninterrupted = workdir(tmp_path, "muon", **recipe)
    assert run_stage(uninterrupted, tokens).returncode == 0
    cwd = workdir(tmp_path, "muon-killed", **recipe)
    assert run_stage(cwd, tokens, fault="kill@step:17").returncode == -signal.SIGKILL
    resumed = run_stage(cwd, tokens)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from models/last.pt at step 10 of 40" in resumed.stderr
    same(finished(cwd, tokens), finished(uninterrupted, tokens))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_gloo_processes_match_one_process(tmp_path, tokens, optimizer):
    # dropout off: with it, each rank draws its own masks, so the runs would differ by design
    changes = {"train.grad_accum_steps": 2, "train.max_iters": 20, "train.lr_decay_iters": 20, "model.dropout": 0.0,
               "train.optimizer": optimizer}
    single = workdir(tmp_path, "single", **changes)
    ddp = workdir(tmp_path, "ddp", **changes, **{"hardware.nproc_per_node": 2})
    results = {cwd: run_stage(cwd, tokens) for cwd in (single, ddp)}
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu x2 in float32" in results[ddp].stderr  # really two processes
    one, two = (losses(cwd / "dvclive/plots/metrics/val/loss.tsv") for cwd in (single, ddp))
    assert [s for s, _ in one] == [s for s, _ in two]
    # the same global batch, split over two ranks: only the order of float sums differs
    assert all(abs(float(a) - float(b)) < 1e-3 for (_, a), (_, b) in zip(one, two)), (one, two)
    assert float(two[-1][1]) < float(two[0][1]) - 1.0
