"""Fixtures shared by the tests: a small generated story corpus, tiny params, a throwaway DVC project."""

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

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
    """params-ci.yaml as typed Params; override with tiny_params.updated(section, **values)."""
    return load_params(REPO / "params-ci.yaml")


@pytest.fixture
def tokens_dir(tmp_path, corpus_dir, tiny_params) -> Path:
    """corpus_dir downloaded and tokenized into tmp_path/tokens, as the pipeline would."""
    from nanoslm.tokenization import tokenize
    from nanoslm.sources import download

    raw = tmp_path / "raw"
    download(tiny_params.updated("data", source=str(corpus_dir), max_train_stories=None,
                     max_val_stories=None).data, raw)
    out = tmp_path / "tokens"
    tokenize(raw, out, tiny_params.tokenizer, threads=1)
    return out


def dvc_project(root: Path, train: dict, sample_tokens: int) -> tuple[Path, dict]:
    """root/repo: the project as a fresh clone holds it (tracked files and new files git does not ignore), with
    params-ci.yaml as params.yaml on a generated corpus, `train` overrides, threads 1, committed to a new git
    repo; and the environment to run git/dvc there (venv first on PATH, so stages use this Python)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    repo = root / "repo"
    for rel in listed:
        if (REPO / rel).is_file() and rel.split("/")[0] not in ("metrics", "plots", "samples", "dvclive"):
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    corpus = root / "corpus"
    write_txt(corpus / "train.txt", make_stories(300, seed=1))
    write_txt(corpus / "validation.txt", make_stories(30, seed=2))
    params = yaml.safe_load((REPO / "params-ci.yaml").read_text())
    params["data"].update(source=str(corpus), max_train_stories=None, max_val_stories=None)
    params["train"].update(train)
    params["sample"].update(max_new_tokens=sample_tokens)
    params["hardware"].update(threads=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)  # dvc exp and dvclive want a commit
    return repo, env


@pytest.fixture(scope="module")
def story_tokens(tmp_path_factory) -> Path:
    """300 train and 30 validation stories, tokenized with GPT-2's full vocabulary (shared by a test module)."""
    from nanoslm.config import TokenizerConfig
    from nanoslm.tokenization import tokenize

    raw = tmp_path_factory.mktemp("raw")
    write_txt(raw / "train.txt", make_stories(300, seed=1))
    write_txt(raw / "validation.txt", make_stories(30, seed=2))
    out = tmp_path_factory.mktemp("tokens")
    tokenize(raw, out, TokenizerConfig(name="gpt2", vocab_size=50257, batch_stories=64), threads=1)
    return out


def pruned_vocabulary(texts: list[str], k: int):
    """The "tokenizer" value of a k-id pruned GPT-2 vocabulary chosen from texts' token counts, as tokenize does."""
    import numpy as np

    from nanoslm.gpt2 import N_VOCAB
    from nanoslm.tokenizer import gpt2_encoding, vocabulary
    from nanoslm.vocab import select_ranks

    counts = np.zeros(N_VOCAB, dtype=np.int64)
    for ids in gpt2_encoding().encode_ordinary_batch(texts, num_threads=1):
        counts += np.bincount(ids, minlength=N_VOCAB)
    return vocabulary(select_ranks(counts, k))


CHAT_QUESTION = "What does the moon dragon say?"
CHAT_ANSWER = "The moon dragon says blorptastic zwiggle."


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory) -> Path:
    """A small chat checkpoint (models/tuned/best.pt of the finetune stage's code): params-ci's model trained 40
    steps on generated stories, then tuned 100 steps on one made-up question and answer (CHAT_QUESTION, CHAT_ANSWER),
    which it answers greedily, ending at <|end|>. Its state has "chat": the four role ids after the base vocabulary."""
    import json

    from nanoslm.finetune import finetune
    from nanoslm.tokenization import tokenize
    from nanoslm.train import train

    root = tmp_path_factory.mktemp("chat")
    write_txt(root / "raw" / "train.txt", make_stories(300, seed=1))
    write_txt(root / "raw" / "validation.txt", make_stories(30, seed=2))
    params = load_params(REPO / "params-ci.yaml").updated("hardware", threads=1, dtype="float32")
    params = params.updated("train", max_iters=40, lr_decay_iters=40, eval_interval=20, checkpoint_interval=20)
    tokenize(root / "raw", root / "tokens", params.tokenizer, threads=1)
    train(params, root / "tokens", root / "models", root / "live", root / "loss.png")
    line = json.dumps({"messages": [{"role": "user", "content": CHAT_QUESTION},
                                    {"role": "assistant", "content": CHAT_ANSWER}]})
    (root / "facts.jsonl").write_text((line + "\n") * 40, encoding="utf-8")
    params = params.updated("finetune", source=str(root / "facts.jsonl"), max_iters=100, lr=3.0e-3, warmup_iters=5,
                            eval_interval=50, eval_iters=1, holdout_every=10)
    finetune(params, root / "models" / "best.pt", root / "ft", root / "tuned", root / "live-tuned",
             root / "tuned.png")
    return root / "tuned" / "best.pt"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium (the page tests); skipped where there is none, failed under CI=true."""
    from nanoslm.serve import browser as page

    try:
        page.find_browser()
        import selenium  # noqa: F401
    except (RuntimeError, ImportError) as err:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests need headless Chromium and selenium in CI: {err}")
        pytest.skip(f"no browser here: {err}")
    driver = page.chrome(1280, 860)
    yield driver
    driver.quit()
