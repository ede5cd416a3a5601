"""The requests stage: each story of data/raw paired with a request derived from it, as conversations in OpenAI's
fine-tuning format (data/requests/{train,validation}.jsonl), the finetune stage's default source.

A line is {"messages": [user: the request, assistant: the story], "request": its checkable constraints}: train
requests from the train split (word statistics from it too), validation requests from the validation split only.
A story whose conversation would not fit the model's context is cut after its last sentence that fits, and the
request is derived from what is kept, so every request stays one its story satisfies; a story whose first
sentence does not fit is left out. The counts of both are returned.
"""

import json
import random
import re
import sys
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_path
from .conversation import ChatTokens, render
from .requests import Request, WordStats, derive
from .sources import SPLITS, iter_txt_stories
from .tokenizer import encoding_for
from .tokens import read_meta


SENTENCE_END = re.compile(r"[.!?][\"\u201d]?(?=\s|$)")  # where a story may be cut: after a sentence (and its quote)


def fitted(story: str, fits, draw, story_fits) -> tuple[str, Request] | None:
    """The longest prefix of `story` ending at a sentence end (the whole story first) whose conversation with the
    request drawn from it fits; None when not even its first sentence does. draw(text) makes the request afresh
    from the same seed each time, so the request a story gets does not depend on how often it was cut.
    story_fits(text) is a cheap necessary condition (the text alone fits), so a prefix that cannot fit costs no
    request drawn (drawing is the slow part: a long story has dozens of sentence ends)."""
    ends = [m.end() for m in SENTENCE_END.finditer(story)][::-1]
    for end in [len(story)] + [e for e in ends if e < len(story)]:
        text = story[:end].strip()
        if not story_fits(text):
            continue
        request = draw(text)
        if fits(request, text):
            return text, request
    return None


def write_requests(raw_dir, tokens_dir, out_dir, block_size: int, seed: int) -> dict:
    """Write out_dir/{split}.jsonl for both splits; per split, the conversations written, cut and left out."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    enc = encoding_for(read_meta(tokens_dir)["tokenizer"])
    chat = ChatTokens.after(enc.n_vocab)
    stats = WordStats.from_stories(iter_txt_stories(raw_dir / "train.txt"))
    counts = {}
    def conversation(request: Request, story: str) -> list[dict]:
        return [{"role": "user", "content": request.text}, {"role": "assistant", "content": story}]

    def fits(request: Request, story: str) -> bool:
        return len(render(conversation(request, story), enc, chat)[0]) <= block_size + 1

    def story_fits(story: str) -> bool:  # the conversation adds at least EOT, 4 markers and one request token
        return len(enc.encode_ordinary(story)) + 6 <= block_size + 1

    for split in SPLITS:
        written = cut = left_out = 0
        with atomic_path(out_dir / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            stories = iter_txt_stories(raw_dir / f"{split}.txt")
            for i, story in enumerate(tqdm(stories, desc=f"requests {split}", unit=" stories", file=sys.stderr)):
                # story i draws from random.Random(f"{seed}:{i}"), as requests.derive_all does
                found = fitted(story, fits, lambda text: derive(text, stats, random.Random(f"{seed}:{i}")),  # noqa: B023
                               story_fits)
                if found is None:
                    left_out += 1
                    continue
                text, request = found
                cut += text != story
                record = {"messages": conversation(request, text), "request": request.to_dict()}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
        counts[split] = {"conversations": written, "cut": cut, "left_out": left_out}
    return counts
