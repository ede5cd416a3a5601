"""The token reader: meta.json and the split .bin files that the tokenize stage wrote, checked before use.

Train, evaluate and bench read tokens through here; it knows nothing of how they were written (nanoslm.tokenization,
nanoslm.vocab, nanoslm.sources), so editing the writer or the download readers reruns no training.

A split's .bin is one EOT, then every story's tokens followed by EOT (uint16 ids, little-endian as numpy writes
them); meta.json holds the vocabulary ("tokenizer"), its size, and each split's stories, tokens and text bytes.
Fine-tuning data (nanoslm.finetune) adds, per split, a .learn.bin (one uint8 per token: 1 where it is a target
to learn), and with conversations the chat ids past the vocabulary (meta.json's "chat"); the requests stage's
train split (data/mixed) has one too.
"""

import json
from pathlib import Path

import numpy as np

from .config import TokenizerConfig
from .errors import UserError
from .tokenizer import checked_ranks, vocab_size_of

FORMAT_VERSION = 1
DTYPE = np.uint16  # GPT-2's 50,257 ids (and any pruned vocabulary's) fit; half the bytes of int32


def read_meta(tokens_dir) -> dict:
    path = Path(tokens_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run: dvc repro tokenize")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path}: not valid JSON; rerun: dvc repro --force tokenize") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not format version {FORMAT_VERSION}; rerun: dvc repro --force tokenize")
    return meta


def load_split(tokens_dir, split: str, block_size: int | None = None) -> np.memmap:
    """Memory-map a split's tokens read-only, after checking the file against meta.json.

    With block_size (train and bench), also refuse a split too short for one window of block_size
    inputs and their targets, or holding an id past meta.json's vocabulary (one pass over the file).
    """
    meta = read_meta(tokens_dir)
    path = Path(tokens_dir) / f"{split}.bin"
    if not path.is_file():
        raise UserError(f"{path}: not found; run: dvc repro tokenize")
    size = path.stat().st_size
    itemsize = np.dtype(DTYPE).itemsize
    if size % itemsize:
        raise UserError(f"{path}: {size} bytes is not a whole number of {np.dtype(DTYPE).name} tokens, so the file is "
                        f"damaged; rerun: dvc repro --force tokenize")
    expected = meta["splits"][split]["tokens"]
    if size // itemsize != expected:
        raise UserError(f"{path}: holds {size // itemsize} tokens but meta.json says {expected}; "
                        f"rerun: dvc repro --force tokenize")
    data = np.memmap(path, dtype=DTYPE, mode="r")
    if block_size is not None:
        check_windows(data, split, block_size, id_bound(meta), path)
    return data


def id_bound(meta: dict) -> int:
    """One past the largest id the tokens may hold: the vocabulary's size, or past the chat ids where there are."""
    return meta["chat"]["end"] + 1 if meta.get("chat") else meta["vocab_size"]


def load_learn(tokens_dir, split: str, tokens: int) -> np.memmap | None:
    """A fine-tuning split's learn mask (uint8, one per token), or None where every target is learned."""
    path = Path(tokens_dir) / f"{split}.learn.bin"
    if not path.is_file():
        return None
    if path.stat().st_size != tokens:
        raise UserError(f"{path}: {path.stat().st_size} flags for {tokens} tokens, so the file is damaged; "
                        f"rerun the stage that wrote it (requests or finetune) with dvc repro --force")
    return np.memmap(path, dtype=np.uint8, mode="r")


def min_tokens(block_size: int) -> int:
    """The fewest tokens a split needs for training: one window of block_size inputs, shifted by one for targets."""
    return block_size + 1


def check_windows(data: np.ndarray, split: str, block_size: int, vocab_size: int, path) -> None:
    """Refuse tokens that cannot feed the model: too few for one window, or an id past the vocabulary."""
    if len(data) < min_tokens(block_size):
        raise UserError(f"{path}: the {split} split has {len(data)} tokens, too few for model.block_size "
                        f"{block_size} (one window needs {min_tokens(block_size)}); lower model.block_size or "
                        f"tokenize more stories (data.max_train_stories, data.max_val_stories)")
    top = int(data.max())  # an id past the embedding would crash mid-run
    if top >= vocab_size:
        raise UserError(f"{path}: token id {top} is not below the tokenizer's {vocab_size} ids, so the file is "
                        f"damaged; rerun: dvc repro --force tokenize")


def check_tokens(tokens_dir, meta: dict, cfg: TokenizerConfig) -> None:
    """Refuse tokens (tokens_dir/meta.json, already read) made with another tokenizer than params' `tokenizer`."""
    where = f"{Path(tokens_dir) / 'meta.json'}"
    value = meta.get("tokenizer")
    name = value.get("name") if isinstance(value, dict) else value
    if name != cfg.name:
        raise UserError(f"{where}: tokens are from tokenizer {name!r} but tokenizer.name is {cfg.name!r}; "
                        f"rerun: dvc repro tokenize")
    if isinstance(value, dict):
        checked_ranks(value, where)
    size = vocab_size_of(value)
    if size != cfg.vocab_size:
        raise UserError(f"{where}: tokens use a {size}-id vocabulary but tokenizer.vocab_size is {cfg.vocab_size}; "
                        f"rerun: dvc repro tokenize")
    if meta.get("vocab_size") != size:
        raise UserError(f"{where}: vocab_size {meta.get('vocab_size')} does not match its tokenizer's {size} ids, so "
                        f"the file is damaged; rerun: dvc repro --force tokenize")
