"""Checks of a story against a request, their summary, chance baseline and copy rate; knows nothing of tokens or models.

Pure functions on text. Words are runs of letters, lowercased; apostrophes split them, so "Lily's" holds "lily".
Inflections: a required word counts as present when the story has any form in forms(word): the word itself, or one
of its bases (the word less a final -s, -es after s/x/z/ch/sh/o, -ies/-ied (+y), -ed or -ing, undoubling or
restoring an -e as the spelling needs) with -s/-es, -ed/-d, -ing, -er, -est or -ly added by the same spelling
rules (a one-syllable word ending consonant-vowel-consonant doubles its last letter: hat -> hatted, never hated).
So "played" is met by play, plays, playing; "big" by bigger, biggest; "happy" by happily, happier. -er, -est and
-ly are only ever added, never removed: "letter" is not met by "let", nor "butter" by "but". Known misses and
slips of so simple a rule: irregular forms (ran for run, went for go) do not count, and a few words that only look
inflected do (evening is met by even).
"""

import hashlib
import random
import re
from typing import Iterable, Optional, Sequence

import numpy as np

from .requests import Request, has_dialogue

CHECKS = ("words", "all_words", "name", "dialogue", "sentence", "finished")
NGRAM = 8

_WORD = re.compile(r"[a-z]+")
_COPY_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")  # copy rate: words keep their contractions (don't, lily's)
_FINAL = re.compile(r"[.!?][\"'\u201d\u2019)]*\Z")
_VOWELS = set("aeiou")
_SIBILANT = ("s", "x", "z", "ch", "sh", "o")


def words(text: str) -> set[str]:
    """The text's words: runs of letters, lowercased."""
    return set(_WORD.findall(text.lower()))


def _short(stem: str) -> bool:
    """One syllable ending consonant, vowel, consonant (not w, x or y): hop, big, car double it before -ed/-ing."""
    return (len(stem) >= 3 and stem[-1] not in _VOWELS | set("wxy") and stem[-2] in _VOWELS
            and stem[-3] not in _VOWELS and len(re.findall("[aeiou]+", stem)) == 1)


def bases(word: str) -> set[str]:
    """The word and what it may be inflected from: less -s, -es, -ies, -ied, -ed or -ing (module docstring)."""
    word = word.lower()
    found = {word}
    if word.endswith(("ies", "ied")) and len(word) >= 5:
        found.add(word[:-3] + "y")  # tries, tried -> try
    if word.endswith("es") and word[:-2].endswith(_SIBILANT) and len(word) >= 5:
        found.add(word[:-2])  # boxes -> box (but cares -> care, not car)
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) >= 4:
        found.add(word[:-1])
    for suffix in ("ed", "ing"):
        stem = word[: -len(suffix)]
        if not word.endswith(suffix) or len(stem) < 3:
            continue
        if stem[-1] == stem[-2] and stem[-1] not in _VOWELS:
            found |= {stem, stem[:-1]}  # kissed -> kiss, stopped -> stop
        elif _short(stem):
            found.add(stem + "e")  # hoped -> hope (hop would have doubled: hopped)
        else:
            found |= {stem, stem + "e"}  # jumped -> jump, danced -> dance
    return found


def inflections(base: str) -> set[str]:
    """The base with -s/-es, -ed/-d, -ing, -er, -est and -ly added, doubling or dropping letters as spelling does."""
    forms = {base, base + "s", base + "ly"}
    if base.endswith(_SIBILANT):
        forms.add(base + "es")
    if base.endswith("e"):
        forms |= {base + "d", base + "r", base + "st", base[:-1] + "ing"}
    elif base.endswith("y") and len(base) > 2 and base[-2] not in _VOWELS:
        forms |= {base[:-1] + s for s in ("ies", "ied", "ier", "iest", "ily")} | {base + "ing"}
    else:
        double = base[-1] if _short(base) else ""  # stop -> stopped, big -> bigger; hat -> hatted, never hated
        forms |= {base + double + s for s in ("ed", "ing", "er", "est")}
    return forms


def forms(word: str) -> set[str]:
    """Every form that counts as `word` present: the inflections of each of its bases."""
    return set().union(*(inflections(base) for base in bases(word)))


def has_word(word: str, story_words: set[str]) -> bool:
    return not forms(word).isdisjoint(story_words)


def normalize(text: str) -> str:
    """Lowercased, curly quotes made straight, whitespace runs made one space."""
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    return " ".join(text.lower().split())


def contains_sentence(story: str, sentence: str) -> bool:
    """Whether the story holds the sentence (normalize()d both), starting at a word boundary."""
    pattern = r"(?<![a-z0-9])" + re.escape(normalize(sentence))
    return re.search(pattern, normalize(story)) is not None


def finished(story: str, ended: Optional[bool] = None) -> bool:
    """Whether the story ends like a finished one: its text ends with . ! or ? (closing quotes may follow), and,
    when the generator says, it stopped at <|endoftext|> (ended=True) rather than at its token limit. Both must hold:
    a story cut at the limit is unfinished even where the cut fell after a full stop."""
    return _FINAL.search(story.rstrip()) is not None and ended is not False


def score(request: Request, story: str, ended: Optional[bool] = None) -> dict:
    """Each check of `story` against `request`: None where the request does not ask for it.

    words: the share of required words present (inflections counted); all_words: all of them present; name: the
    name present as a word; dialogue: quoted speech (a pair of straight or curly double quotes); sentence: the
    sentence present; finished: see finished().
    """
    present = words(story)
    hits = [has_word(w, present) for w in request.words]
    return {
        "words": sum(hits) / len(hits) if hits else None,
        "all_words": all(hits) if hits else None,
        "name": request.name.lower() in present if request.name else None,
        "dialogue": has_dialogue(story) if request.dialogue else None,
        "sentence": contains_sentence(story, request.sentence) if request.sentence else None,
        "finished": finished(story, ended),
    }


def summarize(scores: Iterable[dict]) -> dict:
    """The mean of each check over the requests that ask for it (None where none does), and their counts."""
    scores = list(scores)
    summary = {"requests": len(scores)}
    counts = {}
    for check in CHECKS:
        values = [float(s[check]) for s in scores if s.get(check) is not None]
        summary[check] = sum(values) / len(values) if values else None
        counts[check] = len(values)
    summary["counts"] = counts
    return summary


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (Sattolo's algorithm: one cycle through all n)."""
    if n < 2:
        raise ValueError(f"a chance baseline needs at least 2 stories, got {n}")
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def chance(requests: Sequence[Request], stories: Sequence[str], seed: int) -> dict:
    """summarize() with request i scored against stories[j] for a seeded derangement j != i: what a story that
    ignores the request scores. requests and stories pair up by index (the same length)."""
    if len(requests) != len(stories):
        raise ValueError(f"{len(requests)} requests but {len(stories)} stories; they pair up by index")
    other = derangement(len(stories), seed)
    return summarize(score(request, stories[other[i]]) for i, request in enumerate(requests))


def copy_words(text: str) -> list[str]:
    """The words the copy rate counts: lowercased, contractions kept, punctuation dropped."""
    return _COPY_WORD.findall(text.lower().replace("\u2019", "'"))


def _hashes(tokens: Sequence[str], n: int) -> np.ndarray:
    """A stable 64-bit hash (BLAKE2b) of each n-gram, in order."""
    return np.array([int.from_bytes(hashlib.blake2b(" ".join(tokens[i:i + n]).encode(), digest_size=8).digest(),
                                    "little") for i in range(len(tokens) - n + 1)], dtype=np.uint64)


def train_ngrams(stories: Iterable[str], n: int = NGRAM) -> np.ndarray:
    """The sorted, distinct hashes of every word n-gram of the train stories (within a story, not across two).

    A sorted uint64 array, 8 bytes an n-gram (the shared 1.6M-word sample: about 12 MB), searched by bisection;
    stable hashes, so it may be saved with np.save. A collision (odds ~ count / 2**64) would only overcount a copy.
    """
    parts = [_hashes(copy_words(story), n) for story in stories]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _found(hashes: np.ndarray, table: np.ndarray) -> np.ndarray:
    if not len(table):
        return np.zeros(len(hashes), dtype=bool)
    at = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
    return table[at] == hashes


def copy_rate(generated: Iterable[str], train: np.ndarray, n: int = NGRAM) -> dict:
    """How much of the generated stories is copied from train, by word n-grams (train from train_ngrams, same n).

    copied: the share of the generated n-grams that occur in train; longest: the longest run of words, over all
    stories, whose every n-gram occurs in train (0 where none does; a run stitched from overlapping train n-grams
    counts as copied); longest_mean: that run per story, averaged; longest_text: the run itself.
    """
    total = found = 0
    longest, longest_text, runs = 0, "", []
    for story in generated:
        tokens = copy_words(story)
        hit = _found(_hashes(tokens, n), train)
        total, found = total + len(hit), found + int(hit.sum())
        best, start, run = 0, 0, 0
        for i, h in enumerate(hit):
            run = run + 1 if h else 0
            if run and run + n - 1 > best:
                best, start = run + n - 1, i - run + 1
        runs.append(best)
        if best > longest:
            longest, longest_text = best, " ".join(tokens[start:start + best])
    return {"ngrams": total, "copied": found / total if total else 0.0, "longest": longest,
            "longest_mean": sum(runs) / len(runs) if runs else 0.0, "longest_text": longest_text, "n": n}
