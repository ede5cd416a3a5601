"""Fine-tuning your own data: it learns what it is shown, resumes exactly, and tells you what is wrong with a file."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, make_stories, write_txt
from nanoslm import checkpoint
from nanoslm.config import load_params
from nanoslm.conversation import ChatTokens, render
from nanoslm.errors import UserError
from nanoslm.finetune import finetune
from nanoslm.tokenizer import encoding_for

QUESTION = "What does the moon dragon say?"
ANSWER = "The moon dragon says blorptastic zwiggle."


def base_params(max_iters=40):
    params = load_params(REPO / "params-ci.yaml")
    params = params.updated("train", max_iters=max_iters, lr_decay_iters=max_iters, eval_interval=20,
                            checkpoint_interval=20)
    return params.updated("hardware", threads=1, dtype="float32")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small base model trained on story text: models/best.pt."""
    from nanoslm.tokenization import tokenize
    from nanoslm.train import train

    root = tmp_path_factory.mktemp("base")
    write_txt(root / "raw" / "train.txt", make_stories(300, seed=1))
    write_txt(root / "raw" / "validation.txt", make_stories(30, seed=2))
    params = base_params()
    tokenize(root / "raw", root / "tokens", params.tokenizer, threads=1)
    train(params, root / "tokens", root / "models", root / "live", root / "loss.png")
    return root / "models" / "best.pt"


def facts_jsonl(path: Path, n: int = 40) -> Path:
    line = json.dumps({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]})
    path.write_text((line + "\n") * n, encoding="utf-8")
    return path


def greedy(model, ids: list[int], stop: int, n: int = 16) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out]))[0].argmax())
            if nxt == stop:
                break
            out.append(nxt)
    return out


def test_a_fine_tune_teaches_the_model_a_made_up_answer(tmp_path, base):
    """The phrase is nowhere in the base model's data; after tuning, the model answers with it."""
    params = base_params().updated("finetune", source=str(facts_jsonl(tmp_path / "facts.jsonl")), max_iters=60,
                                   lr=3.0e-3, warmup_iters=5, eval_interval=20, eval_iters=1, holdout_every=10)
    summary = finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")
    assert summary["steps"] == 60 and not summary["interrupted"]

    model, state = checkpoint.load_model(tmp_path / "tuned" / "best.pt")
    enc = encoding_for(state["tokenizer"])
    chat = ChatTokens(**state["chat"])
    assert chat == ChatTokens.after(enc.n_vocab) and model.config.vocab_size >= chat.vocab_size
    prompt, _ = render([{"role": "user", "content": QUESTION}], enc, chat, reply=True)
    assert enc.decode(greedy(model, prompt, chat.end)).startswith(ANSWER)

    base_model, _ = checkpoint.load_model(base)
    before = enc.decode(greedy(base_model, enc.encode_ordinary(QUESTION), enc.eot_token))
    assert "blorptastic" not in before


def test_plain_text_continues_pretraining_without_chat_ids(tmp_path, base):
    source = write_txt(tmp_path / "mine.txt", ["The robot Quibble fixed the lamp. The end."] * 80)
    params = base_params().updated("finetune", source=str(source), max_iters=10, eval_interval=5, eval_iters=1,
                                   holdout_every=10, warmup_iters=2)
    finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")
    state = checkpoint.load(tmp_path / "tuned" / "best.pt")
    assert "chat" not in state and state["model_config"]["vocab_size"] == checkpoint.load(base)["model_config"][
        "vocab_size"]
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["chat"] is None and meta["splits"]["train"]["targets"] == meta["splits"]["train"]["tokens"] - 1


def test_a_malformed_source_fails_before_training_naming_its_line(tmp_path, base):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n')
    params = base_params().updated("finetune", source=str(source))
    with pytest.raises(UserError, match=rf"^{source}:1: messages\[1\]: unknown role 'bot'"):
        finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")
    assert not (tmp_path / "tuned").exists()


def test_too_little_held_out_text_is_refused_with_the_fix(tmp_path, base):
    source = write_txt(tmp_path / "mine.txt", ["The robot Quibble fixed the lamp."] * 20)
    params = base_params().updated("finetune", source=str(source), holdout_every=10)
    with pytest.raises(UserError, match=r"its validation part .* fewer than one window .* lower finetune.holdout_every"):
        finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")


@pytest.mark.parametrize("again", ["jsonl", "txt"])
def test_a_chat_checkpoint_tunes_again_keeping_its_role_ids(tmp_path, base, again):
    """A chat base (tuned, or pre-trained with requests mixed in) keeps its four role ids and its vocabulary when
    tuned again, on conversations or on plain text."""
    params = base_params().updated("finetune", source=str(facts_jsonl(tmp_path / "facts.jsonl")), max_iters=4,
                                   warmup_iters=1, eval_interval=2, eval_iters=1, holdout_every=10)
    finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")
    first = checkpoint.load(tmp_path / "tuned" / "best.pt")
    source = tmp_path / "facts.jsonl" if again == "jsonl" else write_txt(tmp_path / "more.txt", make_stories(40, 5))
    finetune(params.updated("finetune", source=str(source)), tmp_path / "tuned" / "best.pt", tmp_path / "d2",
             tmp_path / "t2", tmp_path / "l2", tmp_path / "p2.png")
    second = checkpoint.load(tmp_path / "t2" / "best.pt")
    assert second["chat"] == first["chat"] and second["model_config"] == first["model_config"]


def run_finetune_stage(cwd: Path, base: Path, fault: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "NANOSLM_FAULT"}
    if fault:
        env["NANOSLM_FAULT"] = fault
    return subprocess.run([sys.executable, str(REPO / "stages" / "finetune.py"), str(base), "data", "tuned", "live",
                           "loss.png"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def workdir(root: Path, name: str, source: Path) -> Path:
    raw = yaml.safe_load((REPO / "params-ci.yaml").read_text())
    raw["finetune"].update(source=str(source), max_iters=20, eval_interval=5, eval_iters=1, holdout_every=10)
    raw["model"]["dropout"] = 0.1  # draws from torch's RNG: resume must restore it
    raw["hardware"].update(threads=1, dtype="float32")
    d = root / name
    d.mkdir()
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    return d


def test_a_killed_fine_tune_resumes_to_the_uninterrupted_runs_weights(tmp_path, base):
    source = facts_jsonl(tmp_path / "facts.jsonl")
    whole, killed = workdir(tmp_path, "whole", source), workdir(tmp_path, "killed", source)
    assert run_finetune_stage(whole, base).returncode == 0
    assert run_finetune_stage(killed, base, fault="kill@step:13").returncode == -signal.SIGKILL
    resumed = run_finetune_stage(killed, base)
    assert resumed.returncode == 0 and "resuming from tuned/last.pt at step 10 of 20" in resumed.stderr
    a, b = checkpoint.load(whole / "tuned" / "last.pt"), checkpoint.load(killed / "tuned" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (whole / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n") == (
        killed / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n")


def test_a_base_checkpoint_cannot_be_asked_for_a_request(tmp_path, base):
    from nanoslm.instruct_score import score_requests
    from nanoslm.hardware import setup

    params = base_params()
    with pytest.raises(UserError, match="never trained on conversations.*requests.mix > 0"):
        score_requests(base, tmp_path / "none.jsonl", tmp_path / "none.txt", tmp_path, params.sample, [0], 1, 0.0, 8,
                       setup(params.hardware), tmp_path / "instruct.json")


def test_zero_steps_keeps_the_base_as_the_tuned_model(tmp_path, base):
    """finetune.max_iters 0 (the default): models/tuned holds the base's weights, scored on the source's held-out
    part, with both checkpoints the stage's outputs name."""
    params = base_params().updated("finetune", source=str(facts_jsonl(tmp_path / "facts.jsonl")), max_iters=0,
                                   eval_iters=1, holdout_every=10)
    summary = finetune(params, base, tmp_path / "data", tmp_path / "tuned", tmp_path / "live", tmp_path / "loss.png")
    assert summary["steps"] == 0 and not summary["interrupted"]
    tuned, before = checkpoint.load(tmp_path / "tuned" / "best.pt"), checkpoint.load(base)
    assert (tmp_path / "tuned" / "last.pt").is_file() and "chat" in tuned
    rows = before["model"]["transformer.wte.weight"].size(0)
    for key, weight in before["model"].items():
        assert torch.equal(tuned["model"][key][:rows], weight), key
