"""The instruct stage: how well a chat checkpoint writes the story a request asks for (metrics/instruct.json).

For each held-out request (data/requests/validation.jsonl: derived from validation stories only), a story is
sampled with the sample settings under each seed, and checked by nanoslm.follow: required words present (with
inflections), all of them, the name, dialogue, the required sentence, finished (ended at <|end|> after a full
stop). Beside it: the same checks of each request against another validation story (chance), the share of the
generated stories' word 8-grams found in the train split and the longest copied span (are the stories new?), and
the checkpoint's bits per byte on the plain validation stories (does it still write well?).
"""

import json
import sys
from pathlib import Path

from tqdm import tqdm

from . import hardware
from .atomic import write_json
from .config import SampleConfig
from .conversation import ChatTokens, decode, render
from .engine import collect, generators
from .errors import UserError
from .evaluate import evaluate_checkpoint
from .follow import chance, copy_rate, score, summarize, train_ngrams
from .generate import load_engine
from .requests import Request
from .sources import iter_txt_stories

ROWS = 32  # requests generated together: all 200 at once took gigabytes (docs/experiments.md, 2026-12-05)


def score_requests(checkpoint_path, requests_path, train_txt, tokens_dir, sampling: SampleConfig, seeds: list[int],
                   limit: int, eval_batch_size: int, hw: hardware.Hardware, out_path) -> dict:
    """Sample, check and summarize the first `limit` requests under each seed; write and return the metrics."""
    engine, enc, state = load_engine(checkpoint_path, hw)
    if "chat" not in state:
        raise UserError(f"{checkpoint_path}: never trained on conversations, so it cannot take a request; "
                        f"pre-train with requests.mix > 0 or fine-tune on a .jsonl source")
    chat = ChatTokens(**state["chat"])
    lines = Path(requests_path).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()][:limit]
    requests = [Request.from_dict(r["request"], where=str(requests_path)) for r in records]
    stories = [r["messages"][-1]["content"] for r in records]
    prompts = [render([{"role": "user", "content": q.text}], enc, chat, reply=True)[0] for q in requests]
    scores, generated = [], []
    for seed in seeds:
        new = []
        for start in tqdm(range(0, len(prompts), ROWS), desc=f"instruct seed {seed}", unit="batch", file=sys.stderr):
            batch = prompts[start:start + ROWS]  # request i samples with seed + i, whatever its batch
            new += collect(engine.stream(batch, sampling, generators(seed + start, len(batch))), len(batch))
        for request, ids in zip(requests, new):
            text = decode(ids, enc, chat).strip()
            scores.append(score(request, text, ended=len(ids) < sampling.max_new_tokens))
            generated.append(text)
    ngrams = train_ngrams(iter_txt_stories(train_txt))
    plain = evaluate_checkpoint(checkpoint_path, tokens_dir, eval_batch_size, hw)
    metrics = {"model": _means(summarize(scores)), "chance": _means(chance(requests, stories, seed=seeds[0])),
               "copy": {k: v for k, v in copy_rate(generated, ngrams).items() if k != "longest_text"},
               "plain_bits_per_byte": plain["bits_per_byte"], "requests": len(requests), "seeds": seeds}
    write_json(out_path, metrics)
    return metrics


def _means(summary: dict) -> dict:
    """A summary's means, with the checks no request asked for left out (dvc metrics wants numbers)."""
    return {k: v for k, v in summary.items() if k != "counts" and v is not None}
