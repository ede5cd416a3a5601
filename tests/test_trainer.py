import csv
import json
import math

import numpy as np
import pytest
import torch

from nanoslm import checkpoint
from nanoslm.config import load_params
from nanoslm.errors import UserError
from nanoslm.batches import windows
from nanoslm.bins import check_windows, min_tokens
from nanoslm.trainer import lr_at, train

from conftest import REPO, make_stories, write_txt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tc(tiny_params):
    return tiny_params.updated("train", lr=1e-3, min_lr=1e-4, warmup_iters=4, lr_decay_iters=20).train


def test_lr_warmup_rises_linearly_to_lr(tc):
    warm = [lr_at(s, tc) for s in range(tc.warmup_iters + 1)]
    assert warm[0] > 0
    steps = np.diff(warm)
    assert np.allclose(steps, steps[0]) and steps[0] > 0  # linear
    assert warm[-1] == pytest.approx(tc.lr)  # reaches lr when warmup ends
    assert max(warm[:-1]) < tc.lr


def test_lr_cosine_decay(tc):
    w, d = tc.warmup_iters, tc.lr_decay_iters
    decay = [lr_at(s, tc) for s in range(w, d + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing
    assert decay[0] == pytest.approx(tc.lr) and decay[-1] == pytest.approx(tc.min_lr)
    assert lr_at((w + d) // 2, tc) == pytest.approx((tc.lr + tc.min_lr) / 2)  # the cosine's midpoint
    quarter = w + (d - w) // 4
    expected = tc.min_lr + (tc.lr - tc.min_lr) * (1 + math.cos(math.pi / 4)) / 2
    assert lr_at(quarter, tc) == pytest.approx(expected)
    assert [lr_at(s, tc) for s in range(d, d + 50)] == [tc.min_lr] * 50  # flat afterwards


def test_lr_without_warmup(tiny_params):
    tc = tiny_params.updated("train", warmup_iters=0, lr_decay_iters=10).train
    assert lr_at(0, tc) == pytest.approx(tc.lr)
    assert lr_at(10, tc) == tc.min_lr


def test_windows_targets_are_shifted_by_one():
    data = (np.arange(200) * 7 % 50257).astype(np.uint16)
    offsets = np.array([0, 13, 191])
    x, y = windows(data, offsets, 8, torch.device("cpu"))
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == torch.int64
    for row, o in enumerate(offsets):
        assert x[row].tolist() == data[o:o + 8].tolist()
        assert y[row].tolist() == data[o + 1:o + 9].tolist()


def test_one_window_is_the_fewest_tokens_train_and_bench_accept():
    block = 8
    assert min_tokens(block) == block + 1
    check_windows(np.zeros(block + 1, np.uint16), "train", block, 50257, "train.bin")  # one window and its targets
    with pytest.raises(UserError, match=r"train.bin: the train split has 8 tokens, too few for model.block_size 8 "
                                        r"\(one window needs 9\)"):
        check_windows(np.zeros(block, np.uint16), "train", block, 50257, "train.bin")
    with pytest.raises(UserError, match="token id 50257 is not below the tokenizer's 50257 ids"):
        check_windows(np.full(block + 1, 50257, np.uint16), "validation", block, 50257, "validation.bin")


def test_bench_and_train_refuse_the_same_short_split(tokens_dir):
    """One check, one message: bench's tokens dir and train's data go through bins.load_split(block_size=...)."""
    from nanoslm import bench, bins
    from nanoslm.config import load_params

    n = len(bins.load_split(tokens_dir, "train"))
    params = load_params(REPO / "params-ci.yaml").updated("model", block_size=n)
    with pytest.raises(UserError) as from_bench:
        bench.run_bench(params, only="train", tokens_dir=tokens_dir)
    with pytest.raises(UserError) as from_train:
        bins.load_split(tokens_dir, "train", block_size=n)
    assert str(from_bench.value) == str(from_train.value)
    assert f"has {n} tokens, too few for model.block_size {n}" in str(from_train.value)
    assert len(bins.load_split(tokens_dir, "train", block_size=n - 1)) == n  # exactly one window fits


# ---- train() end to end: two identical tiny runs, shared by the tests below ----

STEPS, EVAL_INTERVAL, LOG_INTERVAL = 20, 10, 5


def tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from nanoslm.bins import tokenize
    from nanoslm.sources import download

    root = tmp_path_factory.mktemp("train")  # under pytest's temp root: not inside a git repo
    params = load_params(REPO / "params-ci.yaml")
    corpus = root / "corpus"
    write_txt(corpus / "train.txt", make_stories(400, seed=1))
    write_txt(corpus / "validation.txt", make_stories(40, seed=2))
    download(params.updated("data", source=str(corpus), max_train_stories=None, max_val_stories=None).data,
             root / "raw")
    tokenize(root / "raw", root / "tokens", params.tokenizer, threads=1)

    params = params.updated("model", block_size=32, n_layer=1, n_head=2, n_embd=32)
    params = params.updated("train", batch_size=4, max_iters=STEPS, eval_interval=EVAL_INTERVAL, eval_iters=2,
                     log_interval=LOG_INTERVAL, warmup_iters=2, lr_decay_iters=STEPS, lr=3e-3, min_lr=3e-4)
    params = params.updated("hardware", device="cpu", dtype="float32", compile=False, threads=1)

    threads = torch.get_num_threads()
    results = []
    with pytest.MonkeyPatch.context() as mp:
        for name in ("DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "DVCLIVE_RESUME", "DVC_STUDIO_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("DVC_NO_ANALYTICS", "1")
        for run in ("a", "b"):
            out = root / run
            out.mkdir()
            mp.chdir(out)
            summary = train(params, root / "tokens", out / "models", out / "dvclive", out / "plots" / "loss.png")
            results.append((out, summary))
    torch.set_num_threads(threads)
    return params, results


def test_train_writes_its_outputs(runs):
    _, [(out, summary), _] = runs
    assert (out / "models" / "best.pt").is_file() and (out / "models" / "last.pt").is_file()
    assert (out / "plots" / "loss.png").read_bytes()[:8] == PNG_MAGIC
    live = out / "dvclive"
    assert (live / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert (live / "plots" / "metrics" / "val" / "loss.tsv").is_file()
    metrics = json.loads((live / "metrics.json").read_text())
    assert set(metrics) >= {"train", "val", "lr", "tokens", "tokens_per_sec"}
    assert metrics["tokens"] == STEPS * 4 * 32
    assert metrics["lr"] == pytest.approx(lr_at(STEPS - 1, runs[0].train))
    assert not (out / ".dvc").exists() and not (out / "dvc.yaml").exists()  # no repo made, no dvc.yaml written
    assert summary["steps"] == STEPS
    assert not [p.name for p in (out / "models").iterdir() if p.name.startswith(".")]  # no temp files left


def test_logged_losses(runs):
    _, [(out, summary), _] = runs
    live = out / "dvclive"
    train_rows = tsv(live / "plots" / "metrics" / "train" / "loss.tsv")
    val_rows = tsv(live / "plots" / "metrics" / "val" / "loss.tsv")
    assert [int(r["step"]) for r in train_rows] == list(range(LOG_INTERVAL, STEPS + 1, LOG_INTERVAL))
    assert [int(r["step"]) for r in val_rows] == list(range(0, STEPS + 1, EVAL_INTERVAL))
    val = [float(r["loss"]) for r in val_rows]
    train_losses = [float(r["loss"]) for r in train_rows]
    assert abs(val[0] - math.log(50257)) < 0.2  # an untrained model is close to uniform
    assert val[-1] < val[0] - 1.0  # it learned something
    assert train_losses[-1] < train_losses[0]
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["val"]["loss"] == pytest.approx(val[-1], rel=1e-6)
    assert metrics["train"]["loss"] == pytest.approx(train_losses[-1], rel=1e-6)

    best = checkpoint.load(out / "models" / "best.pt")
    assert best["val_loss"] == pytest.approx(min(val), rel=1e-6)
    assert best["val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-12)
    assert best["step"] == int(val_rows[int(np.argmin(val))]["step"])
    assert best["tokenizer"] == "gpt2"
    last = checkpoint.load(out / "models" / "last.pt")
    assert last["step"] == STEPS and last["val_loss"] == pytest.approx(val[-1], rel=1e-6)


def test_best_checkpoint_reproduces_its_val_loss(runs):
    """best.pt's model, scored on the trainer's fixed validation windows, gives the val_loss it was saved with."""
    params, [(out, _), _] = runs
    from nanoslm import bins
    from nanoslm.batches import random_offsets

    model, state = checkpoint.load_model(out / "models" / "best.pt")
    tc, T = params.train, params.model.block_size
    val_data = bins.load_split(out.parent / "tokens", "validation")
    offsets = random_offsets(np.random.default_rng(tc.seed + 1), val_data, tc.eval_iters * tc.batch_size, T)
    with torch.no_grad():
        losses = [model(*windows(val_data, o, T, torch.device("cpu"))).item()
                  for o in offsets.reshape(tc.eval_iters, tc.batch_size)]
    assert np.mean(losses) == pytest.approx(state["val_loss"], rel=1e-5)


def test_same_seed_same_run(runs):
    _, [(a, sa), (b, sb)] = runs
    for split in ("val", "train"):
        rows_a = tsv(a / "dvclive" / "plots" / "metrics" / split / "loss.tsv")
        rows_b = tsv(b / "dvclive" / "plots" / "metrics" / split / "loss.tsv")
        assert [(r["step"], r["loss"]) for r in rows_a] == [(r["step"], r["loss"]) for r in rows_b]
    assert sa == sb
    wa = checkpoint.load(a / "models" / "last.pt")["model"]
    wb = checkpoint.load(b / "models" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_rejects_too_little_data(tmp_path, tiny_params, tokens_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tiny_params.updated("model", block_size=100_000)
    params = params.updated("hardware", device="cpu", dtype="float32", threads=1)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(UserError, match="too few for model.block_size 100000"):
            train(params, tokens_dir, tmp_path / "models", tmp_path / "live", tmp_path / "loss.png")
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "models").exists()
