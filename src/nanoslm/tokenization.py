"""The token writer (the tokenize stage): each split's .txt to a flat file of uint16 token ids, as nanoGPT does.

A split's .bin is one EOT, then every story's tokens followed by EOT, so each story is preceded by EOT:
a window starting at an EOT sees a story from its beginning.

tokenizer.vocab_size 50257 is GPT-2's vocabulary (meta.json "tokenizer": "gpt2"); a smaller K first chooses a pruned
GPT-2 vocabulary from the train split (nanoslm.vocab) and stores it whole in meta.json's "tokenizer" (see
nanoslm.tokenizer), which the trainer copies into every checkpoint. nanoslm.tokens reads what this writes.
"""

import itertools
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
from .tokens import DTYPE, FORMAT_VERSION
from .vocab import choose_vocabulary


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
