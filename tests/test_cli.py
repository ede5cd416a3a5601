"""The `nanoslm` command's generate, chat and export: streamed output, the chat loop, help and one-line errors."""

import io
import sys

import pytest
import torch

from nanoslm import checkpoint
from nanoslm.cli import main
from nanoslm.config import GPTConfig
from nanoslm.engine import Engine, Sampling, generators
from nanoslm.hardware import Hardware
from nanoslm.model import GPT
from nanoslm.tokenizer import get_encoding

from conftest import write_txt

CFG = GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
CPU = Hardware(torch.device("cpu"), torch.float32)
ENC = get_encoding("gpt2")
HW_ARGS = ["--device", "cpu", "--dtype", "float32", "--threads", "1"]


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "best.pt"
    checkpoint.save(path, GPT(CFG), step=30, val_loss=4.25, tokenizer="gpt2")
    return path


def expected(ckpt, prompt, sampling, generator):
    """What the engine makes for `prompt` (decoded); advances `generator` as the CLI does."""
    engine = Engine(checkpoint.load_model(ckpt)[0], CPU)
    (ids,) = engine.generate([ENC.encode_ordinary(prompt)], sampling, [generator])
    return ENC.decode(ids)


class Recorder(io.StringIO):
    """stdout that remembers every write, to see that the text comes piece by piece."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_generate_streams_the_story(ckpt, monkeypatch):
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    main(["generate", "Once upon a time", "--checkpoint", str(ckpt), "--seed", "7", "--max-new-tokens", "12",
          "--temperature", "1.0", "--top-k", "off", *HW_ARGS])
    story = expected(ckpt, "Once upon a time", Sampling(12, 1.0, None), generators(7, 1)[0])
    assert out.getvalue() == f"Once upon a time{story}\n"
    assert len([w for w in out.writes if w]) >= 8  # the prompt, then the new text as it comes, not all at once


def test_generate_several_samples_use_seed_plus_i(ckpt, capsys):
    main(["generate", "Tom", "--checkpoint", str(ckpt), "--seed", "3", "--num-samples", "2", "--max-new-tokens", "6",
          "--top-p", "0.9", *HW_ARGS])
    out = capsys.readouterr().out
    stories = [expected(ckpt, "Tom", Sampling(6, 0.8, 200, 0.9), g) for g in generators(3, 2)]
    assert out == (f"--- sample 1 of 2 (seed 3) ---\nTom{stories[0]}\n\n"
                   f"--- sample 2 of 2 (seed 4) ---\nTom{stories[1]}\n")


def feed(monkeypatch, text):
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_chat_continues_lines_and_changes_settings(ckpt, monkeypatch, capsys):
    feed(monkeypatch, "Once upon a time\n/temp 0.5\n/topk 10\nThe dog\n/topp 0.9\n/max 4\n/settings\n"
                      "/temp -1\n/topk x\n/what\n/new\n\n")
    main(["chat", "--checkpoint", str(ckpt), "--seed", "11", "--max-new-tokens", "8", *HW_ARGS])  # EOF: returns
    out = capsys.readouterr().out
    generator = torch.Generator().manual_seed(11)  # one generator runs on through the session
    first = expected(ckpt, "Once upon a time", Sampling(8, 0.8, 200), generator)
    second = expected(ckpt, "The dog", Sampling(8, 0.5, 10), generator)
    third = expected(ckpt, "", Sampling(4, 0.5, 10, 0.9), generator)  # an empty line: a story from scratch
    assert out.startswith("Nano-SLM story chat, story continuation mode (temperature 0.8, top-k 200, top-p 1.0, "
                          "at most 8 new tokens, seed 11)")  # a base checkpoint: no requests, no conversation
    assert f"> {first}\n\n" in out
    assert "temperature 0.5, top-k 200," in out and "temperature 0.5, top-k 10," in out
    assert f"> {second}\n\n" in out
    assert "temperature 0.5, top-k 10, top-p 0.9, at most 4 new tokens, seed 11" in out
    assert "error: /temp must be from 0 (greedy) to 2, got -1.0\n" in out
    assert "error: /topk needs a number or off, got 'x'\n" in out
    assert "error: unknown command /what; /help lists them\n" in out
    assert "error: /new is for a checkpoint tuned on conversations; this one continues stories\n" in out
    assert out.endswith(f"> {third}\n\n> \n")  # the last prompt, then end of input: a clean exit


def test_chat_leaves_on_quit_and_on_ctrl_c(ckpt, monkeypatch, capsys):
    feed(monkeypatch, "/help\n/quit\nnever read\n")
    main(["chat", "--checkpoint", str(ckpt), "--seed", "1", *HW_ARGS])
    out = capsys.readouterr().out
    assert "/topk N|off" in out and out.endswith("> ")

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", CtrlC())
    main(["chat", "--checkpoint", str(ckpt), "--seed", "1", *HW_ARGS])  # returns: exit status 0
    assert capsys.readouterr().out.endswith("> \n")


@pytest.mark.parametrize("command", ["generate", "chat", "export", "evaluate"])
def test_help_documents_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--checkpoint" in out and "default: models/best.pt" in out
    if command in ("generate", "chat"):
        for flag in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"):
            assert flag in out


@pytest.mark.parametrize("argv", [["generate", "Hi"], ["chat"], ["export", "--out", "OUT"]])
def test_missing_checkpoint_is_one_error_line(argv, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "hf")) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--checkpoint", str(tmp_path / "nope.pt")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "checkpoint not found" in err


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "error: 'sample.temperature' must be from 0 (greedy) to 2, got -1.0"),
    (["--top-p", "0"], "error: 'sample.top_p' must be in (0, 1]"),
    (["--max-new-tokens", "0"], "error: 'sample.max_new_tokens' must be between 1 and 10000, got 0"),
    (["--top-k", "60000"], "error: 'sample.top_k' must be at most the vocabulary size (50257)"),
    (["--threads", "-1"], "error: 'hardware.threads' must be zero or more, got -1"),
    (["--num-samples", "0"], "error: --num-samples must be at least 1"),
    (["--top-k", "many"], "error: nanoslm generate: argument --top-k: expected an integer or off, got 'many'"),
    (["--temperature", "hot"], "error: nanoslm generate: argument --temperature: invalid float value: 'hot'"),
])
def test_bad_settings_are_one_error_line(args, message, ckpt, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "Hi", "--checkpoint", str(ckpt), *HW_ARGS, *args])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert captured.out == ""  # nothing printed before the error


def test_evaluate_batch_size_is_checked_as_params_are(ckpt, tmp_path, capsys):
    data = write_txt(tmp_path / "v.txt", ["Once upon a time."])
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--batch-size", "0", *HW_ARGS])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: 'eval.batch_size' must be positive, got 0\n"
