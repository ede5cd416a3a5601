"""The requests stage: each story of data/raw paired with a request derived from it, as conversations in OpenAI's
fine-tuning format (data/requests/{train,validation}.jsonl), the finetune stage's default source.

A line is {"messages": [user: the request, assistant: the story], "request": its checkable constraints}: train
requests from the train split (word statistics from it too), validation requests from the validation split only.
Stories whose conversation would not fit the model's context are left out (their count is returned).
"""

import json
import sys
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_path
from .conversation import ChatTokens, render
from .requests import WordStats, derive_all
from .sources import SPLITS, iter_txt_stories
from .tokenizer import encoding_for
from .tokens import read_meta


def write_requests(raw_dir, tokens_dir, out_dir, block_size: int, seed: int) -> dict:
    """Write out_dir/{split}.jsonl for both splits; per split, the conversations written and the stories left out."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    enc = encoding_for(read_meta(tokens_dir)["tokenizer"])
    chat = ChatTokens.after(enc.n_vocab)
    stats = WordStats.from_stories(iter_txt_stories(raw_dir / "train.txt"))
    counts = {}
    for split in SPLITS:
        stories = list(iter_txt_stories(raw_dir / f"{split}.txt"))
        written = too_long = 0
        with atomic_path(out_dir / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for story, request in tqdm(zip(stories, derive_all(stories, stats, seed)), total=len(stories),
                                       desc=f"requests {split}", unit=" stories", file=sys.stderr):
                messages = [{"role": "user", "content": request.text}, {"role": "assistant", "content": story}]
                if len(render(messages, enc, chat)[0]) > block_size + 1:
                    too_long += 1
                    continue
                f.write(json.dumps({"messages": messages, "request": request.to_dict()}, ensure_ascii=False) + "\n")
                written += 1
        counts[split] = {"conversations": written, "too_long": too_long}
    return counts
