import numpy as np
import pytest

from nanoslm import tokens as token_files
from nanoslm.tokenization import tokenize, tokenize_split
from nanoslm.tokens import check_tokens, load_split, read_meta
from nanoslm.config import TokenizerConfig
from nanoslm.errors import UserError
from nanoslm.tokenizer import EOT, encoding_for, gpt2_encoding, vocabulary
from nanoslm.vocab import count_gpt2_ids, select_ranks

TRAIN = ["Hello world", "Once upon a time, “Lily” saw a café.\n\nThe end.", "Tom ran.", "A <|endoftext|> B", "Hi."]
VALID = ["The sun came up.", "Sue waved."]


def write_hub_txt(path, stories):
    path.write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_hub_txt(raw / "train.txt", TRAIN)
    write_hub_txt(raw / "validation.txt", VALID)
    return raw


def test_bin_layout(raw, tmp_path):
    enc = gpt2_encoding()
    stats = tokenize_split(raw / "train.txt", tmp_path / "train.bin", enc, batch_stories=2, threads=2)
    ids = np.fromfile(tmp_path / "train.bin", dtype="<u2")
    assert ids[:3].tolist() == [EOT, 15496, 995]  # EOT, then "Hello world"
    eots = np.flatnonzero(ids == EOT)
    assert len(eots) == len(TRAIN) + 1 and eots[0] == 0 and eots[-1] == len(ids) - 1
    decoded = [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(eots[:-1], eots[1:])]
    assert decoded == TRAIN
    assert stats == {"stories": len(TRAIN), "tokens": len(ids), "bytes": sum(len(s.encode()) for s in TRAIN)}


def test_batch_size_does_not_change_the_output(raw, tmp_path):
    enc = gpt2_encoding()
    tokenize_split(raw / "train.txt", tmp_path / "a.bin", enc, batch_stories=1, threads=1)
    tokenize_split(raw / "train.txt", tmp_path / "b.bin", enc, batch_stories=1000, threads=4)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_tokenize_writes_meta_and_reruns_identically(raw, tmp_path):
    out = tmp_path / "tokens"
    meta = tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=3), threads=0)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "validation.bin"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    valid_tokens = 1 + sum(len(gpt2_encoding().encode_ordinary(s)) + 1 for s in VALID)
    assert read_meta(out) == meta
    assert meta == {
        "format_version": 1,
        "tokenizer": "gpt2",
        "vocab_size": 50257,
        "eot_token": 50256,
        "dtype": "uint16",
        "splits": {
            "train": {"stories": 5, "tokens": meta["splits"]["train"]["tokens"],
                      "bytes": sum(len(s.encode()) for s in TRAIN)},
            "validation": {"stories": 2, "tokens": valid_tokens, "bytes": sum(len(s.encode()) for s in VALID)},
        },
    }
    assert meta["splits"]["train"]["tokens"] == len(first["train.bin"]) // 2

    tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=2), threads=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_load_split_memmaps_read_only(raw, tmp_path):
    tokenize(raw, tmp_path / "tokens", TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=8), threads=1)
    ids = load_split(tmp_path / "tokens", "validation")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and ids.mode == "r"
    assert ids[0] == EOT and gpt2_encoding().decode(ids[1:].tolist()).split("<|endoftext|>")[:2] == VALID


def test_failed_write_leaves_no_file(raw, tmp_path):
    class Broken:
        eot_token = EOT
        calls = 0

        def encode_ordinary_batch(self, batch, num_threads):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return gpt2_encoding().encode_ordinary_batch(batch, num_threads=num_threads)

    out = tmp_path / "tokens"
    out.mkdir()
    with pytest.raises(RuntimeError, match="out of memory"):
        tokenize_split(raw / "train.txt", out / "train.bin", Broken(), batch_stories=2, threads=1)
    assert list(out.iterdir()) == []


def test_missing_inputs_say_which_stage_to_run(tmp_path):
    with pytest.raises(UserError, match="dvc repro download"):
        tokenize_split(tmp_path / "train.txt", tmp_path / "train.bin", gpt2_encoding(), 8, 1)
    with pytest.raises(UserError, match="meta.json: not found; run: dvc repro tokenize"):
        load_split(tmp_path, "train")


@pytest.fixture
def tokens(raw, tmp_path):
    out = tmp_path / "tokens"
    tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=8), threads=1)
    return out


def test_odd_byte_count_is_rejected(tokens):
    with open(tokens / "train.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="not a whole number of uint16 tokens"):
        load_split(tokens, "train")


def test_token_count_must_match_meta(tokens):
    ids = np.fromfile(tokens / "train.bin", dtype=np.uint16)
    ids[:-1].tofile(tokens / "train.bin")
    with pytest.raises(UserError, match=f"holds {len(ids) - 1} tokens but meta.json says {len(ids)}"):
        load_split(tokens, "train")


def test_missing_bin_and_old_meta_are_rejected(tokens):
    (tokens / "validation.bin").unlink()
    with pytest.raises(UserError, match="validation.bin: not found"):
        load_split(tokens, "validation")
    (tokens / "meta.json").write_text('{"format_version": 0}')
    with pytest.raises(UserError, match="not format version 1"):
        read_meta(tokens)


def test_the_highest_gpt2_ids_survive_the_bin(tmp_path):
    """GPT-2's last ordinary token (50255, ' gazed') and <|endoftext|> (50256) come back from the uint16 file."""
    write_hub_txt(tmp_path / "train.txt", ["She gazed"])
    tokenize_split(tmp_path / "train.txt", tmp_path / "train.bin", gpt2_encoding(), batch_stories=1, threads=1)
    assert np.fromfile(tmp_path / "train.bin", dtype=token_files.DTYPE).tolist() == [EOT, 3347, 50255, EOT]


def test_pruned_vocabulary_is_chosen_from_train_and_stored_in_meta(raw, tmp_path):
    out = tmp_path / "tokens"
    meta = tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=300, batch_stories=2), threads=1)
    value = meta["tokenizer"]
    assert set(value) == {"name", "vocab_size", "ranks", "sha256"} and value["vocab_size"] == 300
    assert meta["vocab_size"] == 300 and meta["eot_token"] == 299 and read_meta(out) == meta
    assert value == vocabulary(select_ranks(count_gpt2_ids(raw / "train.txt", 8, 1), 300))
    enc = encoding_for(value)
    for split, stories in (("train", TRAIN), ("validation", VALID)):
        ids = load_split(out, split)
        assert ids.max() == 299 and ids[0] == 299
        eots = np.flatnonzero(ids == 299)
        assert [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(eots[:-1], eots[1:])] == stories
        assert meta["splits"][split]["bytes"] == sum(len(s.encode()) for s in stories)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=300, batch_stories=5), threads=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    check_tokens(out, meta, TokenizerConfig(name="gpt2", vocab_size=300, batch_stories=5))


def test_default_vocabulary_keeps_gpt2s_bins_and_meta(raw, tmp_path):
    meta = tokenize(raw, tmp_path / "tokens", TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=2), 1)
    assert meta["tokenizer"] == "gpt2"
    ids = load_split(tmp_path / "tokens", "train").tolist()
    assert ids == [EOT] + [i for s in TRAIN for i in gpt2_encoding().encode_ordinary(s) + [EOT]]
