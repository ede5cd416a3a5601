"""Fixtures shared by the tests: a small generated story corpus and tiny params."""

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from nanoslm.config import load_params
from nanoslm.sources import SEPARATOR

REPO = Path(__file__).resolve().parents[1]

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Sue"]
THINGS = ["ball", "cat", "kite", "cake", "tree", "boat", "hat", "dog"]
FEELINGS = ["happy", "sad", "excited", "tired", "brave", "kind"]


def make_stories(n: int, seed: int = 0) -> list[str]:
    """Simple, varied, TinyStories-like stories (deterministic for a seed)."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name, thing, feeling = rng.choice(NAMES), rng.choice(THINGS), rng.choice(FEELINGS)
        friend = rng.choice([x for x in NAMES if x != name])
        stories.append(
            f"Once upon a time, there was a little child named {name}. {name} had a {thing}.\n"
            f"One day, {name} went to the park with {friend}. They played with the {thing} all day. "
            f"{name} felt {feeling}. \u201cThank you,\u201d said {friend}. The end."
        )
    return stories


def write_txt(path: Path, stories: list[str]) -> Path:
    """Write stories in the hub's .txt layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n{SEPARATOR}\n" for s in stories), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny ops run far faster than on two threads that share 2 busy cores; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """A directory source like ../shared/data/tinystories: train.txt (400 stories) + validation.txt (40)."""
    d = tmp_path / "corpus"
    write_txt(d / "train.txt", make_stories(400, seed=1))
    write_txt(d / "validation.txt", make_stories(40, seed=2))
    return d


@pytest.fixture
def tiny_params():
    """params-ci.yaml as typed Params; override with tiny_params.replace(section, **values)."""
    return load_params(REPO / "params-ci.yaml")


def replace(params, section: str, **values):
    """A copy of `params` with some values of one section changed."""
    return dataclasses.replace(params, **{section: dataclasses.replace(getattr(params, section), **values)})


@pytest.fixture
def tokens_dir(tmp_path, corpus_dir, tiny_params) -> Path:
    """corpus_dir downloaded and tokenized into tmp_path/tokens, as the pipeline would."""
    from nanoslm.bins import tokenize
    from nanoslm.sources import download

    raw = tmp_path / "raw"
    download(replace(tiny_params, "data", source=str(corpus_dir), max_train_stories=None,
                     max_val_stories=None).data, raw)
    out = tmp_path / "tokens"
    tokenize(raw, out, tiny_params.tokenizer, threads=1)
    return out
