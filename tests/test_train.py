import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from nanoslm import checkpoint
from nanoslm.config import load_params
from nanoslm.errors import UserError
from nanoslm.batches import windows
from nanoslm.tokens import check_windows, min_tokens
from nanoslm.train import lr_at, lrs_at, train

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
    """One check, one message: bench's tokens dir and train's data go through tokens.load_split(block_size=...)."""
    from nanoslm import bench, tokens as token_files
    from nanoslm.config import load_params

    n = len(token_files.load_split(tokens_dir, "train"))
    params = load_params(REPO / "params-ci.yaml").updated("model", block_size=n)
    with pytest.raises(UserError) as from_bench:
        bench.run_bench(params, only="train", tokens_dir=tokens_dir)
    with pytest.raises(UserError) as from_train:
        token_files.load_split(tokens_dir, "train", block_size=n)
    assert str(from_bench.value) == str(from_train.value)
    assert f"has {n} tokens, too few for model.block_size {n}" in str(from_train.value)
    assert len(token_files.load_split(tokens_dir, "train", block_size=n - 1)) == n  # exactly one window fits


# ---- train() end to end: two identical tiny runs, shared by the tests below ----

STEPS, EVAL_INTERVAL, LOG_INTERVAL = 20, 10, 5


def tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from nanoslm.tokenization import tokenize
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
    from nanoslm import tokens as token_files
    from nanoslm.batches import random_offsets

    model, state = checkpoint.load_model(out / "models" / "best.pt")
    tc, T = params.train, params.model.block_size
    val_data = token_files.load_split(out.parent / "tokens", "validation")
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


def test_lr_wsd_warms_up_holds_then_decays_linearly(tiny_params):
    tc = tiny_params.updated("train", schedule="wsd", decay_frac=0.25, lr=1e-3, min_lr=1e-4, warmup_iters=4,
                             lr_decay_iters=20).train
    cosine = tiny_params.updated("train", schedule="cosine", lr=1e-3, min_lr=1e-4, warmup_iters=4,
                                 lr_decay_iters=20).train
    assert [lr_at(s, tc) for s in range(4)] == [lr_at(s, cosine) for s in range(4)]  # the same linear warmup
    assert [lr_at(s, tc) for s in range(4, 16)] == [tc.lr] * 12  # flat at the peak until the last quarter
    decay = [lr_at(s, tc) for s in range(15, 21)]  # the last 25% of 20 steps: 15 -> 20, linearly
    assert decay == pytest.approx([tc.lr - i / 5 * (tc.lr - tc.min_lr) for i in range(6)])
    assert [lr_at(s, tc) for s in range(20, 30)] == [tc.min_lr] * 10  # flat afterwards


def test_lr_wsd_decay_never_starts_inside_the_warmup(tiny_params):
    tc = tiny_params.updated("train", schedule="wsd", decay_frac=1.0, lr=1e-3, min_lr=0.0, warmup_iters=4,
                             lr_decay_iters=12).train
    assert lr_at(3, tc) < lr_at(4, tc) == tc.lr  # warmup first, then straight into the decay
    assert lr_at(8, tc) == pytest.approx(tc.lr / 2) and lr_at(12, tc) == 0.0


def test_every_optimizer_follows_the_schedule_at_its_own_peak(tiny_params):
    tc = tiny_params.updated("train", optimizer="muon", lr=1e-3, muon_lr=2e-2, min_lr=1e-4, warmup_iters=4,
                             lr_decay_iters=20).train
    for step in (0, 3, 4, 10, 19, 25):
        adamw, muon = lrs_at(step, tc)
        assert adamw == lr_at(step, tc)
        assert muon == pytest.approx(adamw * tc.muon_lr / tc.lr)
    assert lrs_at(0, tiny_params.train) == [lr_at(0, tiny_params.train)]  # adamw alone: one optimizer


def test_optimizer_step_sets_each_optimizers_learning_rate():
    from nanoslm import hardware
    from nanoslm.model import GPT
    from nanoslm.train import optimizer_step

    cfg = dataclasses.replace(load_params(REPO / "params-ci.yaml").model, n_layer=1, n_embd=16, n_head=2,
                              block_size=8)
    model = GPT(cfg)
    optimizers = model.optimizers(1e-3, 0.1, (0.9, 0.99), muon_lr=2e-2)
    hw = hardware.Hardware(torch.device("cpu"), torch.float32)
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model, optimizers, scaler, [(x, x)], [3e-4, 5e-3], 1.0, hw)
    assert [g["lr"] for g in optimizers[0].param_groups] == [3e-4, 3e-4]
    assert [g["lr"] for g in optimizers[1].param_groups] == [5e-3]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every parameter moved
    assert all(p.grad is None for p in model.parameters())


class _Broken(RuntimeError):
    pass


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    from nanoslm.model import GPT
    from nanoslm.train import maybe_compile

    model = GPT(dataclasses.replace(load_params(REPO / "params-ci.yaml").model, n_layer=1, n_embd=16, n_head=2))

    def no_compiler(module, **options):
        raise _Broken("InvalidCxxCompiler: No working C++ compiler found\nsecond line")

    def fails_when_run(module, **options):
        return lambda *args: no_compiler(module)

    for fake in (no_compiler, fails_when_run):  # compile refuses at once, or at the first call (as inductor does)
        monkeypatch.setattr(torch, "compile", fake)
        with pytest.warns(UserWarning, match="torch.compile failed, running without it: .*No working C") as caught:
            assert maybe_compile(model, True, (1, 8)) is model
        assert len(caught) == 1  # one line, as errors.brief makes it
        assert str(caught[0].message) == ("torch.compile failed, running without it: "
                                          "InvalidCxxCompiler: No working C++ compiler found second line")
    assert maybe_compile(model, False, (1, 8)) is model


def test_compiles_trial_run_draws_nothing_from_the_rngs(monkeypatch):
    """Dropout in the trial call must not move torch's RNG, or a resumed compiled run would differ."""
    from nanoslm.model import GPT
    from nanoslm.train import maybe_compile

    model = GPT(dataclasses.replace(load_params(REPO / "params-ci.yaml").model, n_layer=1, n_embd=16, n_head=2,
                                    dropout=0.5)).train()
    calls, shapes = [], []
    monkeypatch.setattr(torch, "compile", lambda module, **options: calls.append((module, options)) or module)
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert maybe_compile(model, True, (3, 5)) is model and calls == [(model, {"dynamic": False})]
    assert shapes == [(3, 5)]  # the trial runs at the batches' shape, so its graph is validation's
    assert torch.equal(torch.rand(3), expected)
    assert model.training


def test_validation_bits_per_byte_is_logged_beside_the_loss(runs):
    params, [(out, _), _] = runs
    meta = json.loads((out.parent / "tokens" / "meta.json").read_text())["splits"]["validation"]
    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())
    expected = metrics["val"]["loss"] / math.log(2) * (meta["tokens"] - 1) / meta["bytes"]
    assert metrics["val"]["bpb"] == pytest.approx(expected, rel=1e-12)
    from nanoslm import hardware
    from nanoslm.evaluate import evaluate_checkpoint

    exact = evaluate_checkpoint(out / "models" / "best.pt", out.parent / "tokens", 16,
                                hardware.Hardware(torch.device("cpu"), torch.float32))["bits_per_byte"]
    assert metrics["val"]["bpb"] == pytest.approx(exact, rel=0.1)  # an estimate from the fixed windows


def _train_again(runs, tmp_path, monkeypatch, section, **values):
    params, _ = runs
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "DVCLIVE_RESUME", "DVC_STUDIO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    params = params.updated(section, **values)
    threads = torch.get_num_threads()
    try:
        summary = train(params, runs[1][0][0].parent / "tokens", tmp_path / "models", tmp_path / "dvclive",
                        tmp_path / "loss.png")
    finally:
        torch.set_num_threads(threads)
    return summary


def test_a_failing_compile_trains_eagerly_with_the_same_results(runs, tmp_path, monkeypatch):
    def no_compiler(module, **options):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(UserWarning, match="torch.compile failed") as caught:
        summary = _train_again(runs, tmp_path, monkeypatch, "hardware", compile=True)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    _, [(a, sa), _] = runs
    assert summary == sa
    for split in ("train", "val"):
        rows, expected = (tsv(d / "dvclive" / "plots" / "metrics" / split / "loss.tsv") for d in (tmp_path, a))
        assert [(r["step"], r["loss"]) for r in rows] == [(r["step"], r["loss"]) for r in expected]


def test_muon_trains_and_saves_its_state(runs, tmp_path, monkeypatch):
    summary = _train_again(runs, tmp_path, monkeypatch, "train", optimizer="muon", muon_lr=2e-2)
    val = [float(r["loss"]) for r in tsv(tmp_path / "dvclive/plots/metrics/val/loss.tsv")]
    assert val[-1] < val[0] - 1.0 and summary["steps"] == STEPS
    _, [(a, _), _] = runs
    assert val != [float(r["loss"]) for r in tsv(a / "dvclive/plots/metrics/val/loss.tsv")]  # another recipe
    training = checkpoint.load(tmp_path / "models" / "last.pt")["training"]
    adamw, muon = training["optimizers"]
    assert len(muon["state"]) == 4 * runs[0].model.n_layer  # attention's 2 and the MLP's 2 matrices per block
    assert len(adamw["state"]) == 2 + 2 * runs[0].model.n_layer + 1  # wte (= head), wpe and the norms
    assert all("momentum_buffer" in s for s in muon["state"].values())
    assert muon["param_groups"][0]["lr"] == pytest.approx(lr_at(STEPS - 1, runs[0].train, 2e-2))


@pytest.mark.parametrize("dtype, float32_orthogonalization", [(torch.bfloat16, False), (torch.float32, True)])
def test_muon_orthogonalizes_in_bf16_only_when_the_hardware_computes_in_bf16(dtype, float32_orthogonalization):
    from nanoslm import hardware
    from nanoslm.model import GPT
    from nanoslm.train import make_optimizers

    params = load_params(REPO / "params-ci.yaml").updated("train", optimizer="muon")
    model = GPT(dataclasses.replace(params.model, n_layer=1, n_embd=16, n_head=2, block_size=8))
    _, muon = make_optimizers(model, params.train, hardware.Hardware(torch.device("cpu"), dtype))
    assert muon.float32_orthogonalization is float32_orthogonalization
