"""Choose a pruned GPT-2 vocabulary of K ids from the train split (tokenizer.vocab_size < 50257).

Kept: GPT-2's 256 byte tokens, <|endoftext|>, and the GPT-2 tokens most frequent in the first SAMPLE_BYTES of the
train split's stories, each added with every token GPT-2 merges it from (recursively, closed under GPT-2's merges),
so every kept token is formed from kept tokens. Ties are broken by GPT-2 rank, a token whose missing ancestors do
not fit is skipped, and once the used tokens run out the rest is filled by rank: the choice is deterministic.

Why a subset closed under GPT-2's merges encodes exactly as GPT-2's merges.txt restricted to it (what export writes
for Hugging Face, whose BPE merges a listed pair where tiktoken merges any two tokens whose concatenation is a
token):
1. Merging the bytes of a kept token t alone with the subset's ranks takes the same steps as with GPT-2's (each
   token formed on the way is an ancestor of t, so kept, and dropping tokens never chosen changes no choice): it
   ends at t by t's own GPT-2 merge. So tiktoken's shortcut (a word that is a token is that token) agrees with
   merging, and so does Hugging Face without one.
2. Inside any word, the symbols within a stretch that later becomes one token t never merge with symbols outside
   it, and merges are chosen by lowest rank then leftmost: so that stretch evolves exactly as t's bytes alone do,
   and t is only ever formed by its own GPT-2 merge. A pair that concatenates to t some other way is therefore
   never the one tiktoken picks, and leaving it out of merges.txt changes nothing.
"""

import itertools
import os
import sys

import numpy as np
from tqdm import tqdm

from .sources import iter_txt_stories
from .gpt2 import N_BYTES, N_VOCAB
from .tokenizer import Vocabulary, gpt2_encoding, gpt2_merges, vocabulary

SAMPLE_BYTES = 64 << 20  # the train split's first 64 MiB of story text (~80K TinyStories) choose the kept tokens
def count_gpt2_ids(txt_path, batch_stories: int, threads: int, max_bytes: int = SAMPLE_BYTES) -> np.ndarray:
    """How often each GPT-2 id occurs in the first stories of a hub-layout .txt, up to max_bytes of their text."""
    enc = gpt2_encoding()
    counts = np.zeros(N_VOCAB, dtype=np.int64)
    nbytes = 0
    reader = iter_txt_stories(txt_path)
    total = min(max_bytes, os.path.getsize(txt_path))
    with tqdm(desc="choose vocabulary", unit="B", unit_scale=True, total=total, file=sys.stderr) as bar:
        while nbytes < max_bytes and (batch := list(itertools.islice(reader, batch_stories))):
            taken = []
            for story in batch:
                taken.append(story)
                size = len(story.encode("utf-8"))
                nbytes += size
                bar.update(size)
                if nbytes >= max_bytes:
                    break
            for ids in enc.encode_ordinary_batch(taken, num_threads=threads):
                counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=N_VOCAB)
    reader.close()
    return counts


def select_ranks(counts: np.ndarray, vocab_size: int) -> list[int]:
    """The vocab_size - 1 GPT-2 ranks kept (ascending; <|endoftext|> comes on top), chosen from id counts.

    vocab_size = 50257 keeps every rank; tokenizer.vocab_size's range is checked in nanoslm.config."""
    merges = gpt2_merges()
    kept = set(range(N_BYTES))
    room = vocab_size - 1
    order = sorted(range(N_BYTES, N_VOCAB - 1), key=lambda r: (-int(counts[r]), r))
    for rank in order:
        if len(kept) == room:
            break
        if rank in kept:
            continue
        missing, todo = set(), [rank]
        while todo:  # rank and its GPT-2 ancestors not kept yet
            r = todo.pop()
            if r not in kept and r not in missing:
                missing.add(r)
                todo.extend(merges[r - N_BYTES])
        if len(kept) + len(missing) <= room:
            kept |= missing
    return sorted(kept)


def choose_vocabulary(train_txt, vocab_size: int, batch_stories: int, threads: int) -> Vocabulary:
    """meta.json's "tokenizer" value for a vocab_size-id vocabulary chosen from train_txt ("gpt2" for 50257)."""
    if vocab_size == N_VOCAB:
        return "gpt2"
    return vocabulary(select_ranks(count_gpt2_ids(train_txt, batch_stories, threads), vocab_size))
