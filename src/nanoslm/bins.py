"""The tokenize stage: turn each split's .txt into a flat file of uint16 GPT-2 token ids, as nanoGPT does.

A split's .bin is one EOT, then every story's tokens followed by EOT, so each story is preceded by EOT:
a window starting at an EOT sees a story from its beginning.

tokenizer.vocab_size 50257 is GPT-2's vocabulary (meta.json "tokenizer": "gpt2"); a smaller K first chooses a pruned
GPT-2 vocabulary from the train split (nanoslm.vocab) and stores it whole in meta.json's "tokenizer" (see
nanoslm.tokenizer), which the trainer copies into every checkpoint.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

from .atomic import atomic_path, write_json
from .config import TokenizerConfig, cpu_threads
from .errors import UserError
from .sources import SPLITS, iter_txt_stories
from .tokenizer import encoding_for
from .vocab import choose_vocabulary

FORMAT_VERSION = 1
DTYPE = np.uint16  # GPT-2's 50,257 ids (and any pruned vocabulary's) fit; half the bytes of int32


def tokenize_split(txt_path, bin_path, enc: tiktoken.Encoding, batch_stories: int, threads: int) -> dict:
    """Tokenize a hub-layout .txt into `bin_path`, a batch at a time; return its stories, tokens and text bytes.

    threads: encoder threads; 0 means every core.
    """
    txt_path = Path(txt_path)
    threads = cpu_threads(threads)
    if not txt_path.is_file():
        raise UserError(f"{txt_path}: not found; run the download stage first: dvc repro download")
    stories = nbytes = 0
    tokens = 1  # the leading EOT
    with (atomic_path(bin_path) as tmp, open(tmp, "wb") as f,
          tqdm(desc=f"tokenize {txt_path.stem}", unit=" stories", file=sys.stderr) as bar):
        np.array([enc.eot_token], dtype=DTYPE).tofile(f)
        reader = iter_txt_stories(txt_path)
        while batch := list(itertools.islice(reader, batch_stories)):
            ids: list[int] = []
            for story_ids in enc.encode_ordinary_batch(batch, num_threads=threads):
                ids += story_ids
                ids.append(enc.eot_token)
            np.asarray(ids, dtype=DTYPE).tofile(f)
            stories += len(batch)
            tokens += len(ids)
            nbytes += sum(len(story.encode("utf-8")) for story in batch)
            bar.update(len(batch))
    return {"stories": stories, "tokens": tokens, "bytes": nbytes}


def tokenize(raw_dir, out_dir, cfg: TokenizerConfig, threads: int) -> dict:
    """Tokenize raw_dir/{train,validation}.txt into out_dir/{train,validation}.bin and out_dir/meta.json."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train_txt = raw_dir / "train.txt"
    if not train_txt.is_file():
        raise UserError(f"{train_txt}: not found; run the download stage first: dvc repro download")
    value = choose_vocabulary(train_txt, cfg.vocab_size, cfg.batch_stories, cpu_threads(threads))
    enc = encoding_for(value)
    splits = {split: tokenize_split(raw_dir / f"{split}.txt", out_dir / f"{split}.bin", enc, cfg.batch_stories,
                                    threads)
              for split in SPLITS}
    meta = {"format_version": FORMAT_VERSION, "tokenizer": value, "vocab_size": enc.n_vocab,
            "eot_token": enc.eot_token, "dtype": np.dtype(DTYPE).name, "splits": splits}
    write_json(out_dir / "meta.json", meta)
    return meta


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
        check_windows(data, split, block_size, meta["vocab_size"], path)
    return data


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
