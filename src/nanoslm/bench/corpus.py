"""A generated TinyStories-like corpus for the tokenize benchmark: any size, flat memory."""

import random
import typing
from pathlib import Path

from ..errors import UserError
from ..sources import SEPARATOR, iter_txt_stories

_NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Sue", "Tim", "Lucy", "Jack", "Emma", "Leo", "Zoe",
          "Bob", "Kitty", "Spot", "Daisy", "Timmy", "Sara"]
_CREATURES = ["cat", "dog", "bird", "bunny", "frog", "bear", "duck", "fish", "mouse", "puppy", "lion", "owl"]
_THINGS = ["ball", "kite", "cake", "box", "hat", "toy car", "red balloon", "book", "flower", "shiny rock", "boat",
           "blanket", "cookie", "drum", "truck", "doll"]
_PLACES = ["park", "garden", "forest", "beach", "big house", "school", "river", "farm", "store", "hill", "pond"]
_ADJS = ["big", "little", "happy", "sad", "funny", "kind", "brave", "shy", "silly", "pretty", "old", "fast"]
_FEELINGS = ["happy", "sad", "scared", "excited", "proud", "angry", "sorry", "surprised", "tired", "glad"]
_VERBS = ["play", "run", "jump", "sing", "dance", "swim", "climb", "look", "share", "help", "build", "draw"]
_SENTENCES = [
    "One day, {name} went to the {place} with {mom}.",
    "{name} saw a {adj} {creature} near the {place}.",
    "The {creature} wanted to {verb} with the {thing}.",
    "\u201cCan I {verb} with you?\u201d asked {name}.",
    "\u201cYes, you can!\u201d said the {creature} with a smile.",
    "They liked to {verb} and {verb2} all day long.",
    "{name} felt {feeling} because the {thing} was lost.",
    "Then, {friend} came and helped {name} find the {thing}.",
    "It was under a {adj} tree in the {place}.",
    "{name} said, \"Thank you, {friend}. You are a good friend.\"",
    "The sun was warm and the sky was blue.",
    "{name} learned that it is good to {verb} and to be {adj2}.",
    "Every day, {name} and {friend} went to the {place} to {verb}.",
    "But then, a big wind came and took the {thing} away.",
    "{name} was very {feeling}, but {name} did not give up.",
    "{mom} gave {name} a hug and said, \"I love you.\"",
]
_OPENINGS = ["Once upon a time, there was a {adj} {creature} named {name}.",
             "Once upon a time, there was a little girl named {name}. She had a {adj} {thing}.",
             "One day, a little boy named {name} found a {thing} in the {place}.",
             "{name} was a {adj} {creature} who lived in a {place}."]
_ENDINGS = ["From that day on, {name} and {friend} were best friends.", "And they all lived happily ever after.",
            "{name} went home and had a nice nap. The end.", "They played together until the sun went down."]


def generated_stories(seed: int = 0) -> typing.Iterator[str]:
    """An endless stream of simple, varied, TinyStories-like stories (deterministic for a seed)."""
    rng = random.Random(seed)
    choice = rng.choice
    while True:
        name = choice(_NAMES)
        fill = dict(name=name, friend=choice([n for n in _NAMES if n != name]), mom=choice(["Mom", "Dad", "Grandma"]),
                    creature=choice(_CREATURES), thing=choice(_THINGS), place=choice(_PLACES), adj=choice(_ADJS),
                    adj2=choice(_ADJS), feeling=choice(_FEELINGS), verb=choice(_VERBS), verb2=choice(_VERBS))
        paragraphs = [[choice(_OPENINGS)]]
        for _ in range(rng.randint(2, 4)):
            paragraphs.append([choice(_SENTENCES) for _ in range(rng.randint(3, 6))])
        paragraphs[-1].append(choice(_ENDINGS))
        yield "\n".join(" ".join(p) for p in paragraphs).format(**fill)


def write_corpus(path, target_bytes: int, seed_txt=None) -> int:
    """Write at least target_bytes of stories in the hub's .txt layout; return the bytes written.

    seed_txt: a hub-layout .txt file whose stories are cycled through; None = generated stories.
    Streams: memory stays flat whatever the size.
    """
    def stories():
        if seed_txt is None:
            yield from generated_stories()
            return
        if not Path(seed_txt).is_file():
            raise UserError(f"--corpus {seed_txt}: file not found")
        while True:
            empty = True
            for story in iter_txt_stories(seed_txt):
                empty = False
                yield story
            if empty:
                raise UserError(f"--corpus {seed_txt}: no stories in it (hub .txt layout expected)")

    written = 0
    with open(path, "wb") as f:
        for story in stories():
            chunk = f"{story}\n{SEPARATOR}\n".encode("utf-8")
            f.write(chunk)
            written += len(chunk)
            if written >= target_bytes:
                break
    return written
