"""Pruned GPT-2 vocabularies: the choice, the encoding, its description in meta.json and the params check."""

import json
import random

import numpy as np
import pytest

from nanoslm import tokenizer, vocab
from nanoslm.config import TokenizerConfig
from nanoslm.errors import UserError
from nanoslm.tokens import check_tokens
from nanoslm.tokenizer import (EOT_TEXT, N_VOCAB, encoding_for, gpt2_encoding, gpt2_merges, label,
                               vocabulary)

from conftest import make_stories, write_txt

GPT2 = gpt2_encoding()
TEXTS = ["Once upon a time, there was a little girl named Lily.", "  two spaces,\nnew lines\n\n\tand a tab   ",
         "A café, “quoted” 🎉 日本語 — naïve résumé", "don't won't I'm 1234567 3.14 0x1F",
         "Zyzzyva quixotically juxtaposed pneumonoultramicroscopic words", "\x00\x01 control \x7f bytes"]


def counts_of(texts):
    counts = np.zeros(N_VOCAB, dtype=np.int64)
    for ids in GPT2.encode_ordinary_batch(texts, num_threads=1):
        counts += np.bincount(ids, minlength=N_VOCAB)
    return counts


@pytest.fixture(scope="module")
def stories():
    return make_stories(300, seed=3)


@pytest.fixture(scope="module", params=[300, 1024])
def pruned(request, stories):
    """(K, the vocabulary's meta value, its Encoding) chosen from the generated stories."""
    value = vocabulary(vocab.select_ranks(counts_of(stories), request.param))
    return request.param, value, encoding_for(value)


def test_gpt2_merges_are_gpt2s_merges_txt():
    data = tokenizer.verified_data_dir()
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    from nanoslm.export import byte_level
    assert all(encoder[byte_level(GPT2.decode_single_token_bytes(r))] == r for r in range(N_VOCAB - 1))
    text = [byte_level(GPT2.decode_single_token_bytes(r)) for r in range(N_VOCAB - 1)]
    assert [f"{text[a]} {text[b]}" for a, b in gpt2_merges()] == [line for line in lines if line]


def test_layout_ids_and_lossless_round_trip(pruned, stories):
    K, value, enc = pruned
    assert enc.n_vocab == value["vocab_size"] == K and enc.eot_token == K - 1
    assert value["ranks"][:256] == list(range(256)) and len(value["ranks"]) == K - 1
    assert all(enc.decode_single_token_bytes(i) == GPT2.decode_single_token_bytes(i) for i in range(256))
    # ids renumbered densely in GPT-2 rank order
    assert [GPT2.encode_single_token(enc.decode_single_token_bytes(i)) for i in range(K - 1)] == value["ranks"]
    for text in TEXTS + stories[:50]:
        ids = enc.encode_ordinary(text)
        assert max(ids) < K - 1 and enc.decode(ids) == text, text
    assert enc.encode("a" + EOT_TEXT, allowed_special="all")[-1] == K - 1
    # the most frequent GPT-2 tokens of the stories are kept whole
    top = np.argsort(-counts_of(stories), kind="stable")[:20]
    kept = {GPT2.decode_single_token_bytes(r) for r in value["ranks"]}
    assert all(GPT2.decode_single_token_bytes(int(r)) in kept for r in top)


def test_kept_ranks_are_closed_under_gpt2_merges(pruned):
    _, value, _ = pruned
    kept = set(value["ranks"])
    assert all(set(gpt2_merges()[r - 256]) <= kept for r in value["ranks"] if r >= 256)


def reference_bpe(piece: bytes, ranks: dict) -> list[bytes]:
    """Byte-pair merging without tiktoken's whole-word shortcut: lowest rank first, then leftmost."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while True:
        found = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not found:
            return parts
        _, i = min(found)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def test_every_kept_token_is_formed_by_merging_its_bytes(pruned):
    """So tiktoken's shortcut (a word that is a token) and merging (what Hugging Face does) agree."""
    K, _, enc = pruned
    ranks = enc._mergeable_ranks
    for i in range(K - 1):
        token = enc.decode_single_token_bytes(i)
        assert reference_bpe(token, ranks) == [token]


def test_choice_is_deterministic_with_ties_broken_by_rank():
    counts = np.zeros(N_VOCAB, dtype=np.int64)
    assert vocab.select_ranks(counts, 300) == list(range(300 - 1))  # nothing used: the lowest ranks
    counts[50000] = 5  # a used token comes with its GPT-2 ancestors
    ranks = vocab.select_ranks(counts, 400)
    assert 50000 in ranks and len(ranks) == 399 and ranks == sorted(ranks)
    assert vocab.select_ranks(counts, 400) == ranks
    assert vocab.select_ranks(counts, N_VOCAB) == list(range(N_VOCAB - 1))
    assert vocabulary(range(N_VOCAB - 1)) == "gpt2"


def test_choose_vocabulary_reads_the_first_stories(tmp_path, stories):
    txt = write_txt(tmp_path / "train.txt", stories + ["Xylophone zebra quartz " * 30])
    first = vocab.choose_vocabulary(txt, 300, 64, 1)
    assert first == vocabulary(vocab.select_ranks(counts_of(stories + ["Xylophone zebra quartz " * 30]), 300))
    sample = vocab.count_gpt2_ids(txt, 64, 1, max_bytes=len(stories[0].encode()))
    assert sample.sum() == len(GPT2.encode_ordinary(stories[0]))  # only the first story
    assert vocab.choose_vocabulary(txt, N_VOCAB, 64, 1) == "gpt2"


def test_encoding_for_rejects_damaged_values(pruned):
    _, value, _ = pruned
    assert encoding_for(json.loads(json.dumps(value))).n_vocab == value["vocab_size"]
    swapped = {**value, "ranks": value["ranks"][:-1] + [value["ranks"][-1] + 1]}
    if swapped["ranks"][-1] < N_VOCAB - 1:
        with pytest.raises(UserError, match="do not match its sha256"):
            encoding_for(swapped, source="models/best.pt")
    for bad in ({**value, "ranks": value["ranks"][1:]}, {**value, "vocab_size": 7}, {**value, "name": "gpt4"},
                {k: v for k, v in value.items() if k != "sha256"}):
        with pytest.raises(UserError, match="^models/best.pt: the tokenizer value is not a vocabulary"):
            encoding_for(bad, source="models/best.pt")
    with pytest.raises(UserError, match="unknown tokenizer 'gpt4'"):
        encoding_for("gpt4")


def test_label():
    assert label("gpt2") == "gpt2"
    value = vocabulary(vocab.select_ranks(np.zeros(N_VOCAB, dtype=np.int64), 300))
    assert label(value) == f"gpt2-300-{value['sha256'][:8]}"


def meta_of(value):
    return {"tokenizer": value, "vocab_size": tokenizer.vocab_size_of(value)}


def test_check_tokens(pruned):
    K, value, _ = pruned
    cfg = TokenizerConfig(name="gpt2", vocab_size=K, batch_stories=8)
    check_tokens("data/tokens", meta_of(value), cfg)
    check_tokens("data/tokens", meta_of("gpt2"), TokenizerConfig(name="gpt2", vocab_size=N_VOCAB, batch_stories=8))
    with pytest.raises(UserError) as err:
        check_tokens("data/tokens", meta_of(value), TokenizerConfig(name="gpt2", vocab_size=4096, batch_stories=8))
    assert str(err.value) == (f"data/tokens/meta.json: tokens use a {K}-id vocabulary but tokenizer.vocab_size is "
                              f"4096; rerun: dvc repro tokenize")
    with pytest.raises(UserError, match="tokens use a 50257-id vocabulary but tokenizer.vocab_size is 8192"):
        check_tokens("data/tokens", meta_of("gpt2"), TokenizerConfig(name="gpt2", vocab_size=8192, batch_stories=8))
    with pytest.raises(UserError, match="tokens are from tokenizer 'cl100k_base' but tokenizer.name is 'gpt2'"):
        check_tokens("data/tokens", meta_of("cl100k_base"), cfg)
    with pytest.raises(UserError, match="vocab_size 50257 does not match its tokenizer's"):
        check_tokens("data/tokens", {"tokenizer": value, "vocab_size": 50257}, cfg)


def test_random_text_round_trips(pruned):
    _, _, enc = pruned
    rng = random.Random(0)
    alphabet = "aeiou tnslr.,!?'\n\t0123456789é日🎉\u00a0"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_load_engine_uses_the_checkpoints_vocabulary(tmp_path, pruned):
    import torch

    from nanoslm import checkpoint
    from nanoslm.config import GPTConfig
    from nanoslm.generate import load_engine
    from nanoslm.hardware import Hardware
    from nanoslm.model import GPT

    K, value, enc = pruned
    cfg = GPTConfig(block_size=16, vocab_size=K + 64, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
    checkpoint.save(tmp_path / "m.pt", GPT(cfg), step=1, val_loss=1.0, tokenizer=value)
    engine, got, _ = load_engine(tmp_path / "m.pt", Hardware(torch.device("cpu"), torch.float32))
    assert got.n_vocab == K and engine.eot == K - 1 and engine.n_vocab == K  # padded ids are never sampled
    assert got.encode_ordinary("Once upon a time") == enc.encode_ordinary("Once upon a time")
