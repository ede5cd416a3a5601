"""nanoslm bench: it runs, reports every number, and fails cleanly. Behaviour only: no timing assertions."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from nanoslm import bench, cli
from nanoslm.config import load_params
from nanoslm.sources import iter_txt_stories

KEYS = ["device", "dtype", "preset", "train.tokens_per_sec", "train.peak_rss_gb", "reference.tokens_per_sec",
        "reference.peak_rss_gb", "speedup_vs_reference", "peak_rss_gb", "mfu", "achieved_tflops", "peak_tflops",
        "loss_diff", "numerics_ok", "tokenize.mb_per_sec", "tokenize.tokens_per_sec", "tokenize.peak_rss_gb",
        "sample.tokens_per_sec", "sample.tokens_per_sec_no_cache"]
NUMBERS = [k for k in KEYS if k not in ("device", "dtype", "preset", "numerics_ok", "loss_diff")]


def lookup(result: dict, dotted: str):
    for part in dotted.split("."):
        result = result[part]
    return result


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """`nanoslm bench --json` on the tiny preset, 2 timed steps, 1 thread, random tokens, a 0.5 MB corpus; params-ci's
    model at GPT-2's very vocabulary (no requests mixed in, so no chat ids)."""
    cwd = tmp_path_factory.mktemp("bench")
    params = yaml.safe_load((REPO / "params-ci.yaml").read_text())
    params["requests"]["mix"], params["model"]["vocab_size"] = 0.0, 50257
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "nanoslm.cli", "bench", "--params", str(cwd / "params.yaml"), "--preset", "tiny",
         "--steps", "2", "--threads", "1", "--tokenize-corpus-mb", "0.5", "--tokens", str(cwd / "none"), "--json"],
        cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # stdout is exactly one JSON object; progress went to stderr


def test_cli_json_has_every_key_with_positive_finite_numbers(result):
    for key in KEYS:
        lookup(result, key)
    for key in NUMBERS:
        value = lookup(result, key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert result["preset"] == "tiny" and result["device"] == "cpu"
    assert result["peak_rss_gb"] == result["train"]["peak_rss_gb"]
    assert 0 < result["mfu"] and result["model"]["n_embd"] == 64  # the preset was applied
    assert result["tokenize"]["corpus_mb"] >= 0.5


def test_fast_path_loss_matches_the_reference_loop(result):
    assert len(result["train"]["losses"]) == len(result["reference"]["losses"]) == 2 + bench.WARMUP_STEPS
    assert 0 <= result["loss_diff"] <= bench.LOSS_TOLERANCE
    assert result["numerics_ok"] is True
    assert result["loss_diff"] == max(result["loss_diff_first"], result["loss_diff_last"])


def test_at_gpt2s_vocabulary_the_reference_is_the_same_vocab_one(result):
    assert result["reference"]["model"]["vocab_size"] == result["model"]["vocab_size"] == 50257
    assert "reference_same_vocab" not in result
    assert result["speedup_same_vocab"] == result["speedup_vs_reference"]
    assert result["train"]["optimizer"] == "adamw"


@pytest.fixture(scope="module", params=["adamw", "muon"])
def small_vocab(request):
    """The fast path at a 4,096-id vocabulary (as a pruned tokenizer gives) with AdamW or Muon: train phases only."""
    params = bench.apply_preset(load_params(REPO / "params-ci.yaml"), "tiny")
    params = params.updated("requests", mix=0.0).updated("tokenizer", vocab_size=4096).updated("model", vocab_size=4096)
    params = params.updated("train", optimizer=request.param)
    params = params.updated("hardware", threads=1)
    return request.param, bench.run_bench(params, "default", steps=1, only="train")


def test_the_reference_keeps_gpt2s_full_vocabulary_and_a_second_one_matches_the_params(small_vocab):
    optimizer, r = small_vocab
    assert r["reference"]["model"]["vocab_size"] == 50257
    assert r["reference_same_vocab"]["model"]["vocab_size"] == r["model"]["vocab_size"] == 4096
    assert "below 50,257" in r["reference"]["data"] and "below 4,096" in r["data"]  # ids each model can embed
    assert r["reference_same_vocab"]["data"] == r["data"]  # the same batches
    for key in ("speedup_vs_reference", "speedup_same_vocab"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["speedup_vs_reference"] == r["train"]["tokens_per_sec"] / r["reference"]["tokens_per_sec"]
    assert r["speedup_same_vocab"] == (r["train"]["tokens_per_sec"] /
                                       r["reference_same_vocab"]["tokens_per_sec"])
    assert r["train"]["optimizer"] == optimizer
    assert "4,096 ids" in bench.format_table(r) and "50,257 ids" in bench.format_table(r)


def test_numerics_compare_like_with_like(small_vocab):
    optimizer, r = small_vocab
    if optimizer == "adamw":  # against the same-vocabulary reference: same weights, batches and optimizer
        assert r["reference_same_vocab"]["losses"][0] == pytest.approx(r["train"]["losses"][0], abs=0.01)
        assert r["numerics_ok"] is True and r["loss_diff"] <= bench.LOSS_TOLERANCE
    else:
        assert r["numerics_ok"] is None and r["loss_diff"] is None
        assert "muon" in r["numerics_note"] and "not compared" in bench.format_table(r)


def test_table_names_every_phase(result):
    table = bench.format_table(result)
    for word in ("train", "reference", "speedup", "tokenize", "sample", "MFU", "GB"):
        assert word in table
    assert f"{result['speedup_vs_reference']:.2f}x" in table and f"{result['train']['tokens_per_sec']:,.0f}" in table


@pytest.mark.parametrize("args, key", [(["--preset", "nope"], "--preset"), (["--only", "train,bogus"], "--only"),
                                       (["--steps", "0"], "--steps")])
def test_bad_arguments_are_one_line_errors(args, key, capsys, monkeypatch):
    monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--params", str(REPO / "params-ci.yaml"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}") and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(bench.PRESETS))
def test_presets_change_the_params_and_build_models_that_run(name):
    import torch

    from nanoslm.model import GPT

    base = load_params(REPO / "params.yaml")
    params = bench.apply_preset(base, name)
    for section, values in bench.PRESETS[name].items():
        assert {k: getattr(getattr(params, section), k) for k in values} == values
    assert params.tokenizer == base.tokenizer and params.hardware == base.hardware  # only what the preset names
    m = params.model
    torch.manual_seed(0)
    model = GPT(m).eval()
    idx, targets = torch.randint(0, m.vocab_size, (2, 1, m.block_size))
    with torch.no_grad():  # a full block runs, and an untrained model predicts about uniformly
        assert abs(model(idx, targets).item() - math.log(m.vocab_size)) < 0.2
    if name == "gpt2-30m":  # 6 x 384: ~10.6M outside the embeddings (~30M in all with GPT-2's 50,257 ids)
        assert 10e6 < model.num_params(embeddings=False) < 11.5e6


@pytest.mark.parametrize("seeded", [False, True])
def test_write_corpus_reaches_the_size_in_hub_layout(tmp_path, seeded):
    seed = None
    if seeded:
        seed = tmp_path / "seed.txt"
        seed.write_text("A short story.\n<|endoftext|>\nAnother one,\non two lines.\n<|endoftext|>\n", encoding="utf-8")
    path = tmp_path / "corpus.txt"
    written = bench.write_corpus(path, 50_000, seed)
    assert written == path.stat().st_size >= 50_000
    stories = list(iter_txt_stories(path))
    assert len(stories) > 10 and all(stories)
    if seeded:
        assert set(stories) == {"A short story.", "Another one,\non two lines."}


def test_train_phase_runs_the_params_processes_under_torchrun(tmp_path):
    """hardware.nproc_per_node > 1: the fast path runs as the train stage does (DDP), and still matches the reference."""
    params = (REPO / "params-ci.yaml").read_text()
    params = params.replace("grad_accum_steps: 1 ", "grad_accum_steps: 2 ").replace("nproc_per_node: 1 ", "nproc_per_node: 2 ")
    assert "nproc_per_node: 2 " in params and "grad_accum_steps: 2 " in params
    (tmp_path / "params.yaml").write_text(params)
    proc = subprocess.run(
        [sys.executable, "-m", "nanoslm.cli", "bench", "--params", "params.yaml", "--steps", "1", "--threads", "2",
         "--only", "train", "--tokens", "none", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["processes"] == 2 and out["train"]["processes"] == 2
    assert out["numerics_ok"] is True, out["loss_diff"]
