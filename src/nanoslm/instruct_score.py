"""The instruct stage: how well a chat checkpoint writes the story a request asks for (metrics/instruct.json).

For each held-out request (data/requests/validation.jsonl: derived from validation stories only), a story is
sampled with the sample settings under each seed (as long as the context allows, not sample.max_new_tokens), and
checked by nanoslm.follow: required words present (with inflections), all of them, the name, dialogue, the required
sentence, finished (ended at <|end|> after a full stop). Beside it: the same checks of each request against another
validation story (chance), the share of the generated stories' word 8-grams found in the train split and the
longest copied span (are the stories new?), and the checkpoint's bits per byte on the plain validation stories
(does it still write well?). With instruct.nudge > 0, the stories are sampled again with a nudge towards the
requested words (nanoslm.nudge), scored apart.
"""

import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from . import hardware
from .atomic import write_json
from .config import SampleConfig, Sampling
from .conversation import ChatTokens, decode, render
from .engine import collect, generators
from .errors import UserError
from .evaluate import evaluate_checkpoint
from .follow import chance, copy_rate, score, summarize, train_ngrams
from .generate import load_engine
from .nudge import Nudge
from .requests import Request
from .sources import iter_txt_stories

ROWS = 32  # requests generated together: all 200 at once took gigabytes (docs/experiments.md, 2026-12-05)


def score_requests(checkpoint_path, requests_path, train_txt, tokens_dir, sampling: SampleConfig, seeds: list[int],
                   limit: int, nudge: float, eval_batch_size: int, hw: hardware.Hardware, out_path) -> dict:
    """Sample, check and summarize the first `limit` requests under each seed (and again with a Nudge of that
    strength towards the requested words, when nudge > 0); write and return the metrics."""
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

    def room(batch: list[list[int]]) -> Sampling:
        """The sample settings, with as many new tokens as the context holds after the batch's shortest request: an
        answer is finished when the model ends it within its context, after its own request (sample.max_new_tokens
        would cut a whole story the model can write short). A longer request's row runs on, but only what it
        writes within its own room counts."""
        return dataclasses.replace(sampling, max_new_tokens=engine.block_size - min(len(p) for p in batch))

    def answers(process=None, label="") -> tuple[list[dict], list[str]]:
        """Each request's story under each seed (request i samples with seed + i, whatever its batch), checked."""
        scores, texts = [], []
        for seed in seeds:
            new, limits = [], []
            for start in tqdm(range(0, len(prompts), ROWS), desc=f"instruct{label} seed {seed}", unit="batch",
                              file=sys.stderr):
                rows = slice(start, start + ROWS)
                nudge_rows = process(requests[rows], [len(p) for p in prompts[rows]]) if process else None
                steps = engine.stream(prompts[rows], room(prompts[rows]), generators(seed + start, len(prompts[rows])),
                                      process=nudge_rows)
                new += collect(steps, len(prompts[rows]))
                limits += [engine.block_size - len(p) for p in prompts[rows]]  # each answer's own room
            for request, ids, limit in zip(requests, new, limits):
                text = decode(ids[:limit], enc, chat).strip()  # what a longer request's row wrote past its room
                                                               # is not its answer
                scores.append(score(request, text, ended=len(ids) < limit))
                texts.append(text)
        return scores, texts

    scores, generated = answers()
    ngrams = train_ngrams(iter_txt_stories(train_txt))
    plain = evaluate_checkpoint(checkpoint_path, tokens_dir, eval_batch_size, hw)
    metrics = {"model": _means(summarize(scores)), "chance": _means(chance(requests, stories, seed=seeds[0])),
               "copy": {k: v for k, v in copy_rate(generated, ngrams).items() if k != "longest_text"},
               "plain_bits_per_byte": plain["bits_per_byte"], "requests": len(requests), "seeds": seeds}
    if nudge > 0:  # the decoding-time aid, apart: "model" stays the model's own score
        nudged, _ = answers(lambda rs, lengths: Nudge(rs, lengths, enc, nudge), label=" nudged")
        metrics |= {"nudged": _means(summarize(nudged)), "nudge": nudge}
    write_json(out_path, metrics)
    return metrics


def _means(summary: dict) -> dict:
    """A summary's means, with the checks no request asked for left out (dvc metrics wants numbers)."""
    return {k: v for k, v in summary.items() if k != "counts" and v is not None}
