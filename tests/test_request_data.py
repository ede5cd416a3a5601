"""The requests stage: every story becomes a conversation that fits the context and whose request it satisfies."""

import json
import random
import re

import numpy as np
import pytest

from conftest import REPO, make_stories, write_txt
from nanoslm.config import TokenizerConfig, load_params
from nanoslm.conversation import ChatTokens, read_jsonl
from nanoslm.follow import score
from nanoslm.request_data import write_requests
from nanoslm.requests import (TRAIN_WORDS, WORDS, Request, WordStats, derive, main_character, main_characters,
                              rename_main)
from nanoslm.sources import iter_txt_stories
from nanoslm.tokenization import tokenize
from nanoslm.tokenizer import gpt2_encoding
from nanoslm.train import loop, train


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
    counts = write_requests(raw, tokens, tmp_path / "requests", tmp_path / "mixed", block_size, seed=7, mix=0.5,
                            spare=0)
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
            assert len(request.words) <= (TRAIN_WORDS if split == "train" else WORDS)
    assert (counts["train"]["cut"] > 0) == (block_size == 48)


def test_the_same_seed_writes_the_same_requests(tmp_path, raw_and_tokens):
    raw, tokens = raw_and_tokens
    for name in "ab":
        write_requests(raw, tokens, tmp_path / name, tmp_path / name / "mixed", 256, seed=3, mix=0.5, spare=0)
    for path in ("train.jsonl", "mixed/train.bin"):
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_train_conversations_rename_their_main_character_and_held_out_ones_keep_theirs(tmp_path, raw_and_tokens):
    """A train request names one of the train split's main characters, drawn anew for each story (so mostly not
    the story's own), and its story uses that name instead; a held-out request names its story's own character."""
    raw, tokens = raw_and_tokens
    write_requests(raw, tokens, tmp_path / "requests", tmp_path / "mixed", 256, seed=7, mix=0.0, spare=0)
    train = list(iter_txt_stories(raw / "train.txt"))
    stats = WordStats.from_stories(train)
    pool = set(main_characters(train, stats))
    for split, originals in (("train", train), ("validation", list(iter_txt_stories(raw / "validation.txt")))):
        records = [json.loads(line) for line in (tmp_path / "requests" / f"{split}.jsonl").read_text().splitlines()]
        assert len(records) == len(originals)
        own = [main_character(story, stats) for story in originals]
        asked = [r["request"]["name"] for r in records]
        stories = [r["messages"][1]["content"] for r in records]
        assert all(name in story for name, story in zip(asked, stories) if name)
        if split == "validation":
            assert asked == own and stories == originals
        else:
            assert set(asked) - {None} <= pool and len(set(asked)) > 5
            renamed = [a != o for a, o in zip(asked, own) if o]
            assert sum(renamed) > 0.8 * len(renamed)
            assert not any(re.search(rf"\b{o}\b", s) for a, o, s in zip(asked, own, stories) if o and a != o)


def test_without_mixing_pretraining_reads_the_tokenize_stages_tokens_byte_for_byte(tmp_path, raw_and_tokens):
    raw, tokens = raw_and_tokens
    counts = write_requests(raw, tokens, tmp_path / "requests", tmp_path / "mixed", 256, seed=7, mix=0.0, spare=0)
    assert counts["train"]["mixed"] == 0
    for name in ("train.bin", "validation.bin"):
        assert (tmp_path / "mixed" / name).read_bytes() == (tokens / name).read_bytes()
    assert np.fromfile(tmp_path / "mixed" / "train.learn.bin", dtype=np.uint8)[1:].all()  # every target
    meta, plain = (json.loads((d / "meta.json").read_text()) for d in (tmp_path / "mixed", tokens))
    assert meta["chat"] is None and meta["splits"] == plain["splits"]


@pytest.mark.parametrize("mix, spare", [(0.5, 0), (1.0, 0), (1.0, 8)])
def test_mixed_stories_follow_their_request_as_conversations(tmp_path, raw_and_tokens, mix, spare):
    """The train stream holds every train story in order, whole; `mix` of those whose whole conversation fits the
    context with `spare` tokens left over come after the request derived from them, their main character renamed,
    marked as conversation.render marks a user turn and the assistant's answer; a story too long to answer whole
    stays plain, with its own names."""
    raw, tokens = raw_and_tokens
    block_size = 96
    counts = write_requests(raw, tokens, tmp_path / "requests", tmp_path / "mixed", block_size, seed=7, mix=mix,
                            spare=spare)
    enc = gpt2_encoding()
    chat = ChatTokens.after(enc.n_vocab)
    meta = json.loads((tmp_path / "mixed" / "meta.json").read_text())
    assert meta["chat"] == {"system": chat.system, "user": chat.user, "assistant": chat.assistant, "end": chat.end}
    stream = np.fromfile(tmp_path / "mixed" / "train.bin", dtype=np.uint16).tolist()
    learn = np.fromfile(tmp_path / "mixed" / "train.learn.bin", dtype=np.uint8).tolist()
    assert len(learn) == len(stream)
    assert len(stream) == meta["splits"]["train"]["tokens"] and stream[0] == enc.eot_token
    stories = list(iter_txt_stories(raw / "train.txt"))
    stats = WordStats.from_stories(stories)
    names = main_characters(stories, stats)
    pieces, flags, at = [], [], 1
    while at < len(stream):
        end = stream.index(enc.eot_token, at)
        pieces.append(stream[at:end])
        flags.append(learn[at : end + 1])  # the piece's targets and the end-of-text after it
        at = end + 1
    assert len(pieces) == len(stories) == meta["splits"]["train"]["stories"]
    mixed = plain_that_fit = 0
    for i, (piece, flag, story) in enumerate(zip(pieces, flags, stories)):
        answer = rename_main(story, stats, names, random.Random(f"7:name:{i}"))
        request = derive(answer, stats, random.Random(f"7:{i}"), TRAIN_WORDS)
        conversation = [chat.user, *enc.encode_ordinary(request.text), chat.end, chat.assistant,
                        *enc.encode_ordinary(answer), chat.end]
        fits = len(conversation) + 1 <= block_size + 1 - spare  # with the EOT before it, as render counts
        if piece[0] != chat.user:
            assert piece == enc.encode_ordinary(story) and all(flag)  # a plain story: every target learned
            plain_that_fit += fits
            continue
        mixed += 1
        assert piece == conversation and fits
        learned = len(enc.encode_ordinary(answer)) + 1  # the story and its <|end|>, then the end-of-text
        assert flag == [0] * (len(piece) - learned) + [1] * (learned + 1)  # not the request: only the answer
    assert mixed == counts["train"]["mixed"] > 0
    assert plain_that_fit == 0 if mix == 1.0 else 0.3 < mixed / (mixed + plain_that_fit) < 0.7
    assert counts["train"]["cut"] > 0  # stories the jsonl cuts to fit are plain in pre-training
    assert (tmp_path / "mixed" / "validation.bin").read_bytes() == (tokens / "validation.bin").read_bytes()


def test_pretraining_on_the_mixed_tokens_keeps_conversations_whole_and_learns_answers(tmp_path, raw_and_tokens,
                                                                                       monkeypatch):
    """The train stage on data/mixed: its windows keep each conversation whole (batches.Passes) and it learns the
    targets train.learn.bin flags, not the requests."""
    raw, tokens = raw_and_tokens
    counts = write_requests(raw, tokens, tmp_path / "requests", tmp_path / "mixed", 96, seed=7, mix=1.0, spare=0)
    seen, windows, load_data = {}, loop.train_windows, loop.load_data

    def spy_windows(*args, **kwargs):
        seen["sampler"] = windows(*args, **kwargs)
        return seen["sampler"]

    def spy_data(*args, **kwargs):
        seen["data"] = load_data(*args, **kwargs)
        return seen["data"]

    monkeypatch.setattr(loop, "train_windows", spy_windows)
    monkeypatch.setattr(loop, "load_data", spy_data)
    params = load_params(REPO / "params-ci.yaml").updated("hardware", threads=1, dtype="float32", compile=False)
    params = params.updated("model", block_size=96).updated(
        "train", max_iters=2, lr_decay_iters=2, warmup_iters=1, eval_interval=2, checkpoint_interval=2, eval_iters=1)
    summary = train(params, tmp_path / "mixed", tmp_path / "models", tmp_path / "live", tmp_path / "loss.png")
    assert (tmp_path / "models" / "best.pt").is_file() and not summary["interrupted"]
    begins, _ = seen["sampler"].whole
    assert len(begins) == counts["train"]["mixed"] > 0
    _, train_split, _ = seen["data"]
    assert train_split.learn is not None and 0 < train_split.learn.mean() < 1
