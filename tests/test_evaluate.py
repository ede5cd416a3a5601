import json
import math

import numpy as np
import pytest
import torch

from nanoslm import checkpoint, tokens as token_files
from nanoslm.cli import main
from nanoslm.config import GPTConfig
from nanoslm.errors import UserError
from nanoslm.evaluate import evaluate_checkpoint, metrics, split_nll
from nanoslm.evaluate_text import evaluate_text_file
from nanoslm.hardware import Hardware
from nanoslm.model import GPT

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
KEYS = {"val_loss", "perplexity", "bits_per_byte", "tokens", "bytes", "step", "tokenizer", "vocab_size"}


def make(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def random_tokens(n, seed=1):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, n).astype(np.uint16)


def brute_force_nll(model, tokens):
    """Token by token: token i is predicted from the tokens since the start of its window, up to block_size."""
    T = model.config.block_size
    total = 0.0
    with torch.no_grad():
        for i in range(1, len(tokens)):
            start = (i - 1) // T * T
            context = torch.tensor(tokens[start:i].astype(np.int64))[None]
            logits = model(context)[0].double()  # last position only
            total -= torch.log_softmax(logits, dim=-1)[int(tokens[i])].item()
    return total


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "models" / "best.pt"
    checkpoint.save(path, make(), step=42, val_loss=3.0, tokenizer="gpt2")
    return path


@pytest.mark.parametrize("n", [3 * 16 + 1, 3 * 16 + 1 + 5, 2, 17, 20])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_split_nll_equals_a_brute_force_sum(n, batch_size):
    model, tokens = make(), random_tokens(n)
    expected = brute_force_nll(model, tokens)
    assert split_nll(model, tokens, batch_size, CPU) == pytest.approx(expected, rel=1e-5)


def test_split_nll_does_not_depend_on_batch_size():
    model, tokens = make(), random_tokens(5 * 16 + 9)
    results = {split_nll(model, tokens, b, CPU) for b in (1, 2, 3, 64)}
    assert max(results) - min(results) < 1e-3


def test_split_nll_needs_two_tokens():
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        split_nll(make(), random_tokens(1), 4, CPU)


def test_metrics_formulas():
    m = metrics(nll=10.0, tokens=4, text_bytes=8)
    assert m == {
        "val_loss": 2.5,
        "perplexity": pytest.approx(math.exp(2.5)),
        "bits_per_byte": pytest.approx(10.0 / math.log(2) / 8),
        "tokens": 4,
        "bytes": 8,
    }


def test_evaluate_checkpoint(ckpt, tokens_dir):
    first = evaluate_checkpoint(ckpt, tokens_dir, batch_size=32, hw=CPU)
    assert set(first) == KEYS
    tokens = token_files.load_split(tokens_dir, "validation")
    meta = token_files.read_meta(tokens_dir)
    assert first["tokens"] == len(tokens) - 1  # every token but the first, once
    assert first["bytes"] == meta["splits"]["validation"]["bytes"]
    assert first["step"] == 42
    nll = split_nll(make(), np.asarray(tokens), 7, CPU)  # the same weights, from the seed
    assert first["val_loss"] == pytest.approx(nll / first["tokens"], rel=1e-5)
    assert first["perplexity"] == pytest.approx(math.exp(first["val_loss"]))
    assert first["bits_per_byte"] == pytest.approx(first["val_loss"] * first["tokens"] / math.log(2) / first["bytes"])
    assert abs(first["val_loss"] - math.log(CFG.vocab_size)) < 0.1  # untrained: close to uniform
    second = evaluate_checkpoint(ckpt, tokens_dir, batch_size=32, hw=CPU)
    assert second == first  # bit-identical floats


def test_evaluate_checkpoint_rejects_another_tokenizer(ckpt, tmp_path):
    checkpoint.save(ckpt, make(), step=1, val_loss=1.0, tokenizer="other")
    tokens = tmp_path / "t"
    tokens.mkdir()
    (tokens / "meta.json").write_text(json.dumps({"format_version": 1, "tokenizer": "gpt2"}))
    with pytest.raises(UserError, match="trained with tokenizer .other. .50257 ids. but .* holds tokens of .gpt2. .50257 ids."):
        evaluate_checkpoint(ckpt, tokens, 8, CPU)


def test_evaluate_text_file_matches_the_bins(ckpt, tokens_dir, tmp_path):
    txt = tmp_path / "raw" / "validation.txt"  # what tokens_dir's validation.bin was made from
    assert txt.is_file()
    from_text = evaluate_text_file(ckpt, txt, batch_size=32, hw=CPU)
    from_bins = evaluate_checkpoint(ckpt, tokens_dir, batch_size=32, hw=CPU)
    assert from_text == from_bins


def test_cli_evaluate_prints_json(ckpt, tokens_dir, tmp_path, capsys):
    txt = tmp_path / "raw" / "validation.txt"
    main(["evaluate", "--checkpoint", str(ckpt), "--data", str(txt), "--device", "cpu", "--threads", "1"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == KEYS
    assert result["step"] == 42
    assert result["tokens"] == len(token_files.load_split(tokens_dir, "validation")) - 1

    main(["evaluate", "--checkpoint", str(ckpt), "--data", str(txt), "--device", "cpu", "--dtype", "float32",
          "--batch-size", "5", "--threads", "1"])
    exact = json.loads(capsys.readouterr().out)
    expected = evaluate_text_file(ckpt, txt, batch_size=32, hw=CPU)
    assert exact.keys() == expected.keys()
    for key in KEYS - {"tokenizer"}:
        assert exact[key] == pytest.approx(expected[key], rel=1e-5), key
    assert exact["tokenizer"] == expected["tokenizer"] == "gpt2"


def test_cli_missing_checkpoint_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    txt = tmp_path / "v.txt"
    txt.write_text("Hi.\n<|endoftext|>\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(txt), "--device", "cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.pt" in lines[0]


def test_cli_missing_data_file_exits_2(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "nope.txt"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_pruned_vocabulary_is_scored_and_named(tmp_path, tiny_params):
    from nanoslm.tokenization import tokenize
    from nanoslm.tokenizer import label

    from conftest import make_stories, write_txt

    write_txt(tmp_path / "raw" / "train.txt", make_stories(60, seed=1))
    write_txt(tmp_path / "raw" / "validation.txt", make_stories(6, seed=2))
    meta = tokenize(tmp_path / "raw", tmp_path / "tokens", tiny_params.updated("tokenizer", vocab_size=300).tokenizer,
                    threads=1)
    cfg = GPTConfig(**{**CFG.__dict__, "vocab_size": 300})
    torch.manual_seed(0)
    path = tmp_path / "pruned.pt"
    checkpoint.save(path, GPT(cfg), step=3, val_loss=5.0, tokenizer=meta["tokenizer"])
    result = evaluate_checkpoint(path, tmp_path / "tokens", 8, CPU)
    assert result["vocab_size"] == 300 and result["tokenizer"] == label(meta["tokenizer"])
    assert result["tokenizer"].startswith("gpt2-300-") and result["bytes"] == meta["splits"]["validation"]["bytes"]
    assert abs(result["val_loss"] - math.log(300)) < 0.2  # untrained: near uniform over 300 ids
    assert evaluate_text_file(path, tmp_path / "raw" / "validation.txt", 8, CPU) == result

    # the same model on GPT-2's bins (or bins of another pruned choice) is refused, not scored
    gpt2_tokens = tmp_path / "gpt2-tokens"
    tokenize(tmp_path / "raw", gpt2_tokens, tiny_params.tokenizer, threads=1)
    with pytest.raises(UserError, match=r"trained with tokenizer 'gpt2-300-\w{8}' \(300 ids\) but .* holds tokens "
                                        r"of 'gpt2' \(50257 ids\); rerun: dvc repro$"):
        evaluate_checkpoint(path, gpt2_tokens, 8, CPU)
    other = dict(meta["tokenizer"], ranks=meta["tokenizer"]["ranks"][:-1] + [meta["tokenizer"]["ranks"][-1] + 1])
    checkpoint.save(path, GPT(cfg), step=3, val_loss=5.0, tokenizer=other)
    with pytest.raises(UserError, match="trained with tokenizer 'gpt2-300-"):
        evaluate_checkpoint(path, tmp_path / "tokens", 8, CPU)
