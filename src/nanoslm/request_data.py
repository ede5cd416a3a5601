"""The requests stage: each story of data/raw paired with a request derived from it, as conversations in OpenAI's
fine-tuning format (data/requests/{train,validation}.jsonl: the finetune stage's default source and the instruct
stage's requests), and the train stage's tokens (data/mixed): the train split with requests.mix of its stories
pre-trained after their request (MixedTokens), among the stories whose whole conversation fits the context with
requests.spare tokens left over.

A line is {"messages": [user: the request, assistant: the story], "request": its checkable constraints}: train
requests from the train split (word statistics from it too), naming up to requests.TRAIN_WORDS words; validation
requests from the validation split only, up to requests.WORDS, as a person's request would.
A train conversation's story has its main character renamed (requests.rename_main): a name drawn from the train
split's main characters whose pronouns agree. The held-out names a model failed to write were rare ones it had
never been asked for; renaming raised names from 0.92 to 0.93-0.95 (docs/experiments.md, 2026-12-05 16:03 to
16:50). A plain story in pre-training keeps its names.
A story whose conversation would not fit the model's context is cut after its last sentence that fits, and the
request is derived from what is kept, so every request stays one its story satisfies; a story whose first
sentence does not fit is left out. The counts of both are returned. Pre-training never cuts: a story that does not
fit whole, with `spare` tokens of the context to spare, stays a plain story there, so a model learns to answer a
request with a whole story it can write well within its context, ending it at <|end|> (docs/experiments.md,
2026-12-05: whole stories past the context left a third of the answers unfinished, and with 48 tokens to spare
0.96 of them were finished, against 0.86 with none).
"""

import dataclasses
import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import atomic_path, write_json
from .conversation import ChatTokens, render
from .requests import TRAIN_WORDS, WORDS, Request, WordStats, derive, main_characters, rename_main
from .sources import SPLITS, iter_txt_stories
from .tokenizer import encoding_for
from .tokens import DTYPE, read_meta


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


def conversation(request: Request, story: str) -> list[dict]:
    """The request as the user's turn, the story as the assistant's."""
    return [{"role": "user", "content": request.text}, {"role": "assistant", "content": story}]


def write_requests(raw_dir, tokens_dir, out_dir, mixed_dir, block_size: int, seed: int, mix: float,
                   spare: int) -> dict:
    """Write out_dir/{split}.jsonl for both splits, and mixed_dir's tokens (MixedTokens); per split, the
    conversations written, cut and left out, and the train stories pre-trained with a request."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    meta = read_meta(tokens_dir)
    enc = encoding_for(meta["tokenizer"])
    chat = ChatTokens.after(enc.n_vocab)
    stats = WordStats.from_stories(iter_txt_stories(raw_dir / "train.txt"))
    names = main_characters(iter_txt_stories(raw_dir / "train.txt"), stats)
    counts = {}
    def fits(request: Request, story: str) -> bool:
        return len(render(conversation(request, story), enc, chat)[0]) <= block_size + 1

    def story_fits(story: str) -> bool:  # the conversation adds at least EOT, 4 markers and one request token
        return len(enc.encode_ordinary(story)) + 6 <= block_size + 1

    mixed_dir = Path(mixed_dir)
    with atomic_path(mixed_dir / "train.bin") as mixed_tmp, open(mixed_tmp, "wb") as mixed_file, \
            atomic_path(mixed_dir / "train.learn.bin") as learn_tmp, open(learn_tmp, "wb") as learn_file:
        mixed = MixedTokens(mixed_file, learn_file, enc, chat if mix > 0 else None)
        for split in SPLITS:
            written = cut = left_out = 0
            with atomic_path(out_dir / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
                stories = iter_txt_stories(raw_dir / f"{split}.txt")
                for i, plain in enumerate(tqdm(stories, desc=f"requests {split}", unit=" stories", file=sys.stderr)):
                    story = plain if split != "train" else rename_main(plain, stats, names,
                                                                       random.Random(f"{seed}:name:{i}"))
                    def draw(text: str, i=i, words=TRAIN_WORDS if split == "train" else WORDS) -> Request:
                        return derive(text, stats, random.Random(f"{seed}:{i}"), words)  # seeded as derive_all
                    found = fitted(story, fits, draw, story_fits)
                    if split == "train":  # a request only where the whole story answers it, with room to spare
                        rendered = None
                        if random.Random(f"{seed}:mix:{i}").random() < mix and found is not None and found[0] == story:
                            rendered = render(conversation(found[1], story), enc, chat)
                        fits_spare = rendered is not None and len(rendered[0]) <= block_size + 1 - spare
                        mixed.add(story if fits_spare else plain, rendered if fits_spare else None)
                    if found is None:
                        left_out += 1
                        continue
                    text, request = found
                    cut += text != story
                    record = {"messages": conversation(request, text), "request": request.to_dict()}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    written += 1
            counts[split] = {"conversations": written, "cut": cut, "left_out": left_out}
        mixed.flush()
    mixed.finish(mixed_dir, tokens_dir, meta)
    counts["train"]["mixed"] = mixed.conversations
    return counts


class MixedTokens:
    """The train stage's tokens: the train split as the tokenize stage wrote it (EOT, then each story and EOT),
    except that a story given a request is written as a conversation (<|user|> request <|end|> <|assistant|> story
    <|end|>, then EOT: what conversation.render makes after its EOT); the validation split copied as it is (plain
    stories: validation loss stays comparable). With chat None (requests.mix 0) the train split is the tokenize
    stage's, byte for byte, and meta.json has no chat ids.

    train.learn.bin flags the targets learned (nanoslm.tokens.load_learn): all but a conversation's user turn and
    the <|assistant|> after it, as render marks them (what fine-tuning learns too). A request's words are drawn
    from its story, so predicting them before the story is guesswork; not learning it gave plain stories 0.002
    bits/byte back (docs/experiments.md, 2026-12-05 13:52)."""

    FLUSH = 4096  # stories per write: memory stays flat on the hub's 2M-story train split

    def __init__(self, file, learn_file, enc, chat: ChatTokens | None):
        self.file, self.learn_file, self.enc, self.chat = file, learn_file, enc, chat
        self.ids, self.learn = [enc.eot_token], [False]
        self.stories, self.tokens, self.bytes, self.conversations = 0, 0, 0, 0

    def add(self, story: str, conversation: tuple[list[int], list[bool]] | None) -> None:
        """Append a story, or its conversation (conversation.render's ids and learn flags) where it has one."""
        if conversation is not None:  # less the EOT the stream already has before it
            self.ids += conversation[0][1:]
            self.learn += conversation[1][1:]
            self.conversations += 1
        else:
            ids = self.enc.encode_ordinary(story)
            self.ids += ids
            self.learn += [True] * len(ids)
        self.ids.append(self.enc.eot_token)
        self.learn.append(True)
        self.stories += 1
        self.bytes += len(story.encode("utf-8"))
        if self.stories % self.FLUSH == 0:
            self.flush()

    def flush(self) -> None:
        np.asarray(self.ids, dtype=DTYPE).tofile(self.file)
        np.asarray(self.learn, dtype=np.uint8).tofile(self.learn_file)
        self.tokens += len(self.ids)
        self.ids, self.learn = [], []

    def finish(self, out_dir: Path, tokens_dir, meta: dict) -> None:
        """Copy the validation split and write meta.json (the chat ids where conversations were written)."""
        with atomic_path(out_dir / "validation.bin") as tmp:
            shutil.copyfile(Path(tokens_dir) / "validation.bin", tmp)
        train = {"stories": self.stories, "tokens": self.tokens, "bytes": self.bytes}
        write_json(out_dir / "meta.json", {**meta, "chat": dataclasses.asdict(self.chat) if self.chat else None,
                                           "splits": {**meta["splits"], "train": train}})
