"""Faults and bad input: a full disk, a killed stage, mismatched files; each a one-line error, nothing half-written."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, dvc_project, write_txt
from nanoslm import atomic, checkpoint, tokenization
from nanoslm.errors import UserError
from nanoslm.model import GPT
from nanoslm.tokenizer import get_encoding


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# --- a full disk: a clear error, and the previous good file stays --------------------------------------


def test_disk_full_keeps_the_previous_file(tmp_path):
    target = tmp_path / "eval.json"
    atomic.write_json(target, {"val_loss": 1.0})
    with pytest.raises(UserError, match=r"eval\.json: disk full while writing it; the previous version is kept"):
        with atomic.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("{")
                no_space()
    assert json.loads(target.read_text()) == {"val_loss": 1.0}
    assert leftovers(tmp_path) == []


def test_disk_full_while_writing_bins(tmp_path, corpus_dir, monkeypatch):
    enc = get_encoding("gpt2")
    good = tmp_path / "train.bin"
    tokenization.tokenize_split(corpus_dir / "train.txt", good, enc, 64, 1)
    before = good.read_bytes()

    class FullDisk(np.ndarray):
        tofile = no_space

    real_asarray = np.asarray
    monkeypatch.setattr(tokenization.np, "asarray", lambda *a, **k: real_asarray(*a, **k).view(FullDisk))
    with pytest.raises(UserError, match="disk full"):
        tokenization.tokenize_split(corpus_dir / "train.txt", good, enc, 64, 1)
    assert good.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    cfg = replace_model(block_size=8, n_layer=1, n_head=1, n_embd=8)
    path = tmp_path / "best.pt"
    checkpoint.save(path, GPT(cfg), step=1, val_loss=2.0, tokenizer="gpt2")
    before = path.read_bytes()

    def half_then_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        no_space()

    monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
    with pytest.raises(UserError, match=r"best\.pt: disk full while writing it"):
        checkpoint.save(path, GPT(cfg), step=2, val_loss=1.0, tokenizer="gpt2")
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def replace_model(**values):
    from nanoslm.config import load_params

    return load_params(REPO / "params-ci.yaml").updated("requests", spare=0).updated("model", **values).model


# --- killed stages leave nothing a later `dvc repro` would accept -----------------------------------------


def test_sigkill_in_each_stage_then_dvc_repro_completes(tmp_path):
    repo, env = dvc_project(tmp_path, dict(max_iters=4, warmup_iters=1, lr_decay_iters=4, eval_interval=2,
                                           log_interval=2, checkpoint_interval=2), sample_tokens=4)

    def repro(fault=None):
        run_env = dict(env, NANOSLM_FAULT=fault) if fault else env
        return subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=run_env, capture_output=True,
                              text=True, timeout=600)

    # each run gets one stage further, is killed the moment that stage's output is complete but not yet in
    # place, and must leave neither that output nor a temporary file a later stage could pick up
    for stage, fault, output in (("download", "kill@publish:train.txt", "data/raw/train.txt"),
                                 ("tokenize", "kill@publish:train.bin", "data/tokens/train.bin"),
                                 ("evaluate", "kill@publish:eval.json", "metrics/eval.json"),
                                 ("sample", "kill@publish:stories.md", "samples/stories.md")):
        result = repro(fault)
        out = result.stdout + result.stderr
        # DVC reports the signal as -9, or as 137 where its shell (bash, on some machines) forks instead of exec'ing
        killed = "exited with -9" in out or "exited with 137" in out
        assert result.returncode != 0 and f"failed to reproduce '{stage}'" in out and killed, out
        assert not (repo / output).exists(), fault

    result = repro()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert {"val_loss", "perplexity", "bits_per_byte", "tokens"} <= metrics.keys()
    for folder in ("data/raw", "data/tokens", "metrics", "samples"):  # stale temp files of killed writers: swept
        assert leftovers(repo / folder) == [], folder
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, env=env, capture_output=True,
                            text=True)
    assert "up to date" in status.stdout


# --- files that disagree with params or with each other -----------------------------------------------------


def run_stage(stage: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[-1]


def stage_dir(tmp_path, **changes) -> Path:
    params = yaml.safe_load((REPO / "params-ci.yaml").read_text())
    params["hardware"].update(threads=1)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_checkpoint_from_another_model_config_is_refused(tmp_path, tokens_dir):
    cwd = stage_dir(tmp_path, **{"model.n_layer": 3})
    small = replace_model(n_layer=1)
    checkpoint.save(cwd / "best.pt", GPT(small), step=1, val_loss=2.0, tokenizer="gpt2")
    for stage, args in (("evaluate", ["best.pt", str(tokens_dir), "eval.json"]), ("sample", ["best.pt", "s.md"])):
        line = one_error_line(run_stage(stage, args, cwd))
        assert "best.pt: trained with model.n_layer=1 but params.yaml has 3" in line, line
        assert not (cwd / args[-1]).exists()


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path, tokens_dir):
    cwd = stage_dir(tmp_path)
    bad = np.fromfile(tokens_dir / "train.bin", dtype=np.uint16)
    bad[5] = 60000
    bad.tofile(tokens_dir / "train.bin")
    line = one_error_line(run_stage("train", [str(tokens_dir), "models", "dvclive", "loss.png"], cwd))
    assert "train.bin: token id 60000 is not below the tokenizer's 50257 ids" in line


def test_meta_from_another_tokenizer_is_refused(tmp_path, tokens_dir):
    cwd = stage_dir(tmp_path)
    meta = json.loads((tokens_dir / "meta.json").read_text())
    meta["tokenizer"] = "cl100k_base"
    (tokens_dir / "meta.json").write_text(json.dumps(meta))
    line = one_error_line(run_stage("train", [str(tokens_dir), "models", "dvclive", "loss.png"], cwd))
    assert "meta.json: tokens are from tokenizer 'cl100k_base' but tokenizer.name is 'gpt2'" in line


def test_validation_too_small_for_the_eval_settings(tmp_path, tokens_dir):
    cwd = stage_dir(tmp_path, **{"train.eval_iters": 100000})
    line = one_error_line(run_stage("train", [str(tokens_dir), "models", "dvclive", "loss.png"], cwd))
    assert "train.eval_iters x train.batch_size" in line and "lower train.eval_iters" in line


def test_block_size_larger_than_the_validation_split(tmp_path, tokens_dir):
    cwd = stage_dir(tmp_path, **{"model.block_size": 100000})
    line = one_error_line(run_stage("train", [str(tokens_dir), "models", "dvclive", "loss.png"], cwd))
    assert "too few for model.block_size 100000" in line


def test_a_story_longer_than_anything_else_is_fine(tmp_path):
    long_story = " ".join(["Once upon a time there was a very long story."] * 40000)  # ~1.8 MB, one story
    txt = write_txt(tmp_path / "long.txt", [long_story, "A short one."])
    stats = tokenization.tokenize_split(txt, tmp_path / "long.bin", get_encoding("gpt2"), 2, 1)
    assert stats["stories"] == 2 and stats["tokens"] > 400000
    ids = np.fromfile(tmp_path / "long.bin", dtype=np.uint16)
    assert (ids == 50256).sum() == 3


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Path("/etc/passwd")}, path)  # any non-tensor class
    with pytest.raises(UserError, match="refused to load"):
        checkpoint.load(path)


def test_params_never_reach_a_shell():
    """dvc.yaml's commands interpolate no params, and the library starts no shell. A param may name a dep (the
    finetune stage's ${finetune.source}: DVC hashes that file, no shell sees it), nowhere else."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert "${" not in stage["cmd"], name
        outside_deps = {k: v for k, v in stage.items() if k != "deps"}
        assert "${" not in json.dumps(outside_deps), name
    for source in (REPO / "src" / "nanoslm").rglob("*.py"):
        text = source.read_text()
        assert "shell=True" not in text and "os.system(" not in text and "os.popen(" not in text, source.name
