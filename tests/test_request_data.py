"""The requests stage: every story becomes a conversation that fits the context and whose request it satisfies."""

import json

import pytest

from conftest import make_stories, write_txt
from nanoslm.config import TokenizerConfig
from nanoslm.conversation import ChatTokens, read_jsonl
from nanoslm.follow import score
from nanoslm.request_data import write_requests
from nanoslm.requests import Request
from nanoslm.tokenization import tokenize
from nanoslm.tokenizer import gpt2_encoding


@pytest.fixture
def raw_and_tokens(tmp_path):
    raw = tmp_path / "raw"
    write_txt(raw / "train.txt", make_stories(120, seed=1))
    write_txt(raw / "validation.txt", make_stories(20, seed=2))
    tokenize(raw, tmp_path / "tokens", TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=64), threads=1)
    return raw, tmp_path / "tokens"


@pytest.mark.parametrize("block_size", [48, 256])
def test_each_conversation_fits_and_its_story_meets_its_request(tmp_path, raw_and_tokens, block_size):
    """A short context cuts stories at a sentence end and derives the request from what is kept, never dropping a
    requirement the kept story does not meet; a long one keeps them whole."""
    raw, tokens = raw_and_tokens
    counts = write_requests(raw, tokens, tmp_path / "requests", block_size, seed=7)
    enc = gpt2_encoding()
    for split, n in (("train", 120), ("validation", 20)):
        path = tmp_path / "requests" / f"{split}.jsonl"
        conversations = read_jsonl(path, enc, ChatTokens.after(enc.n_vocab), context=block_size)  # all fit
        assert counts[split]["conversations"] == len(conversations) == n - counts[split]["left_out"] > 0
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            request, story = Request.from_dict(record["request"]), record["messages"][1]["content"]
            assert record["messages"][0]["content"] == request.text
            checks = {k: v for k, v in score(request, story).items() if v is not None}
            assert all(v == 1 for v in checks.values()), (request, story, checks)
    assert (counts["train"]["cut"] > 0) == (block_size == 48)


def test_the_same_seed_writes_the_same_requests(tmp_path, raw_and_tokens):
    raw, tokens = raw_and_tokens
    write_requests(raw, tokens, tmp_path / "a", 256, seed=3)
    write_requests(raw, tokens, tmp_path / "b", 256, seed=3)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
