"""The decoding-time aid: a boost to each requested word's first tokens until the row writes one of them."""

import json

import torch

from nanoslm.engine import Engine, Sampling, generators
from nanoslm.hardware import Hardware
from nanoslm.nudge import Nudge, first_tokens
from nanoslm.requests import Request
from nanoslm.tokenizer import gpt2_encoding

CPU = Hardware(torch.device("cpu"), torch.float32)


def request(*words: str) -> Request:
    return Request("Write a story.", tuple(words), None, False, None)


def test_a_word_is_boosted_in_every_form_until_the_row_writes_it():
    enc = gpt2_encoding()
    ball = first_tokens("ball", enc)
    assert ball == {enc.encode_ordinary(t)[0] for t in (" ball", " Ball")} and len(ball) == 2
    nudge = Nudge([request("ball", "cake"), request("tree")], prompt_lengths=[2, 3], enc=enc, strength=2.5)
    seqs = [[1, 2], [1, 2, 3]]
    logits = torch.zeros(2, enc.n_vocab, dtype=torch.bfloat16)
    out = nudge([0, 1], seqs, logits)
    boosted = [set(torch.nonzero(row).flatten().tolist()) for row in out]
    assert boosted == [ball | first_tokens("cake", enc), first_tokens("tree", enc)]
    assert out.dtype == torch.float32 and out.max() == 2.5 and logits.abs().sum() == 0  # the input is untouched
    seqs[0].append(enc.encode_ordinary(" Ball")[0])  # row 0 wrote one form of "ball": only cake stays boosted
    out = nudge([0], seqs, torch.zeros(1, enc.n_vocab))
    assert set(torch.nonzero(out[0]).flatten().tolist()) == first_tokens("cake", enc)
    seqs[1][:] = [enc.encode_ordinary(" tree")[0], 9, 9]  # a word in the prompt does not count as written
    assert nudge([1], seqs, torch.zeros(1, enc.n_vocab)).max() == 2.5


def test_the_engine_samples_from_what_a_processor_returns():
    from test_engine import PROMPTS, make

    model = make(scale=8.0)
    forced = 4321
    def force(rows, seqs, logits):
        out = logits.clone()
        out[:, forced] = 1e4
        return out
    greedy = Sampling(5, 0.0, None)
    (plain,) = Engine(model, CPU).generate([PROMPTS[1]], greedy, generators(0, 1))
    (row,) = collect_with(Engine(model, CPU), [PROMPTS[1]], greedy, force)
    assert row == [forced] * 5 != plain


def collect_with(engine, prompts, sampling, process):
    from nanoslm.engine import collect

    return collect(engine.stream(prompts, sampling, generators(0, len(prompts)), process=process), len(prompts))


def test_the_instruct_score_reports_the_nudged_stories_apart(tmp_path, chat_checkpoint):
    from nanoslm.config import SampleConfig
    from nanoslm.instruct_score import score_requests

    root = chat_checkpoint.parent.parent
    asked = [request("moon", "dragon"), request("ball", "tree", "cake")]
    lines = [json.dumps({"messages": [{"role": "user", "content": r.text}, {"role": "assistant", "content": "A story."}],
                         "request": r.to_dict()}) for r in asked]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sampling = SampleConfig(prompts=["x"], requests=[], max_new_tokens=20, temperature=0.8, top_k=None, top_p=1.0,
                            seed=0)
    def run(nudge):
        return score_requests(chat_checkpoint, tmp_path / "requests.jsonl", root / "raw" / "train.txt",
                              root / "tokens", sampling, [0, 1], 2, nudge, 8, CPU, tmp_path / "instruct.json")
    off, on = run(0.0), run(50.0)
    assert "nudged" not in off and on["model"] == off["model"]  # the model's own score is the same either way
    assert on["nudge"] == 50.0 and on["nudged"]["words"] > max(0.75, off["model"]["words"])  # a word may still glue on
    assert json.loads((tmp_path / "instruct.json").read_text())["nudged"] == on["nudged"]
