"""Requests derived from stories (words, name, dialogue, a sentence), phrased; knows nothing of tokens or models.

A request names only what its own story satisfies and nanoslm.follow can check, in the spirit of
TinyStories-Instruct (Eldan & Li 2023); no outside data. Everything is deterministic from the seed.

Which words: content words (not a stopword, not a name, letters only, 3+ letters) whose document frequency in
the train split lies in [MIN_DF, MAX_DF]: common enough for a small model to have learned them, not so common
that any story has them (which would only raise the chance baseline). Up to WORDS of them (a train request:
TRAIN_WORDS), drawn uniformly (seeded) from those the story uses, in the form the story uses.
Names: a word is a name when, in the train split and the story together, it appears capitalized in mid-sentence
at least MIN_NAME_COUNT times and at least NAME_SHARE of its mid-sentence uses are capitalized, or STORY_NAME_SHARE
when the story itself never writes it in lower case mid-sentence (Spot, Kitty: names in some stories, nouns in
others). Sentence-initial uses are not counted either way, so "The", "Once" or "One" never qualify; nor do
single letters, all-capital words (TV) or NOT_NAMES. The main character is the story's most frequent name (ties:
the first to appear). rename_main gives a story's main character another name (a train request's, so that a model
learns to write the name it is asked for, not the commonest: see nanoslm.request_data).
Sentence: with probability SENTENCE_SHARE, one of the story's narration sentences (not inside quotes, none in
them) of SENTENCE_WORDS words, not its first sentence ("Once upon a time ..." is in nearly every story), chosen
uniformly.
"""

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from .errors import UserError

WORDS = 3  # at most this many required words per request ...
TRAIN_WORDS = 5  # ... and per train request: more words to carry over per story learned (docs/experiments.md,
                 # 2026-12-05 13:30 and 13:52)
MIN_DF = 0.10  # a required word is in at least 10% of train stories (0.05 before: docs/experiments.md, 2026-12-05) ...
MAX_DF = 0.30  # ... and at most 30% (see module docstring)
MIN_NAME_COUNT = 2
NAME_SHARE = 0.9
STORY_NAME_SHARE = 0.5  # a name in one story when it never appears in lower case mid-sentence there
SENTENCE_SHARE = 0.25
SENTENCE_WORDS = (4, 8)  # inclusive

QUOTES = "\"\u201c\u201d"
PRONOUNS = {w: kind for kind, ws in (("she", "she her hers herself"), ("he", "he him his himself"))
            for w in ws.split()}
# Capitalized mid-sentence, yet no character's name: titles, days, months, holidays, languages.
NOT_NAMES = frozenset("""i mr mrs ms dr miss sir mister god monday tuesday wednesday thursday friday saturday sunday
january february march april june july august september october november december christmas easter halloween
thanksgiving english spanish french""".split())
STOPWORDS = frozenset("""
a about above after again against all almost also always am an and another any anything are around as at away
back be became because become been before being below between both but by came can cannot come could did didn
do does doing done don down during each else even ever every everyone everything for from get got had has have
having he her here hers herself him himself his how i if in into is it its itself just let lets like made make
many may me might more most much must my myself never next no nobody none nor not nothing now of off often on
once one only onto or other others our ours ourselves out over own really said same say says see she should
so some someone something soon still such than that the their theirs them themselves then there these they
thing things this those though through to together too toward towards under until up upon us very was way we
well went were what when where which while who whom whose why will with without would yes yet you your yours
yourself yourselves oh wow hello hi okay ok bye please thank thanks sorry ah uh hey day time yes
""".split())

_TOKEN = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)?")  # a word, possibly with a contraction or possessive
_BOUNDARY = re.compile(r"[.!?\n\"\u201c\u201d:;]")  # between two words, one of these starts a new sentence
_SENTENCE = re.compile(r"[^.!?\n\"\u201c\u201d\s][^.!?\n]*[.!?]+")  # starts after quotes and spaces


@dataclass(frozen=True)
class Request:
    """What a story is asked to do: its text, and each constraint as data for nanoslm.follow to check."""

    text: str
    words: tuple = ()
    name: Optional[str] = None
    dialogue: bool = False
    sentence: Optional[str] = None

    def to_dict(self) -> dict:
        """The JSON form: {"text", "words" (a list), "name", "dialogue", "sentence"}; null where not asked."""
        return {"text": self.text, "words": list(self.words), "name": self.name, "dialogue": self.dialogue,
                "sentence": self.sentence}

    @classmethod
    def from_dict(cls, record, where: str = "request") -> "Request":
        """A Request from its JSON form; a record missing "text" or with a wrongly typed field is a UserError."""
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise UserError(f"{where}: needs a non-empty string \"text\", e.g. {{\"text\": \"Write a story about "
                            f"a cat.\"}}; the other fields (words, name, dialogue, sentence) are optional")
        words = record.get("words") or []
        checks = [("words", isinstance(words, list) and all(isinstance(w, str) and w.strip() for w in words),
                   "a list of words"),
                  ("name", isinstance(record.get("name"), (str, type(None))), "a string or null"),
                  ("dialogue", isinstance(record.get("dialogue", False), bool), "true or false"),
                  ("sentence", isinstance(record.get("sentence"), (str, type(None))), "a string or null")]
        for key, ok, what in checks:
            if not ok:
                raise UserError(f"{where}: \"{key}\" must be {what}, got {record.get(key)!r}")
        return cls(record["text"], tuple(w.strip() for w in words), record.get("name") or None,
                   record.get("dialogue", False), record.get("sentence") or None)

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str, where: str = "request") -> "Request":
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: invalid JSON ({err.msg}); write one object per line") from None
        return cls.from_dict(record, where)


@functools.lru_cache(maxsize=4)  # deriving one request reads the same story's words three times
def tokens(story: str) -> tuple[tuple[str, bool], ...]:
    """The story's words (possessive 's cut off, contractions kept whole), each with whether it starts a sentence."""
    found, end = [], 0
    for match in _TOKEN.finditer(story):
        initial = end == 0 or bool(_BOUNDARY.search(story, end, match.start()))
        end = match.end()
        word = match.group()
        if word[-2:] in ("'s", "\u2019s"):
            word = word[:-2]
        found.append((word, initial))
    return tuple(found)


@dataclass
class WordStats:
    """Train-split statistics: document frequency of lowercased words, and mid-sentence capitalization counts."""

    stories: int = 0
    df: Counter = field(default_factory=Counter)
    capital: Counter = field(default_factory=Counter)  # lowercased word -> mid-sentence uses capitalized
    lower: Counter = field(default_factory=Counter)  # lowercased word -> mid-sentence uses in lower case

    @classmethod
    def from_stories(cls, stories: Iterable[str]) -> "WordStats":
        stats = cls()
        for story in stories:
            stats.stories += 1
            capital, lower = _case_counts(story)
            stats.df.update({w.lower() for w, _ in tokens(story)})
            stats.capital.update(capital)
            stats.lower.update(lower)
        return stats

    def share(self, word: str) -> float:
        """The share of train stories that use `word` (lowercased) at least once."""
        return self.df[word.lower()] / max(self.stories, 1)

    def is_name(self, word: str, capital: Counter = None, lower: Counter = None) -> bool:
        """Whether `word` is a name by the train counts, plus one story's own counts when given."""
        key = word.lower()
        if key in NOT_NAMES or len(word) < 2 or not word[0].isupper() or word.isupper():
            return False
        story_cap, story_low = (capital or {}).get(key, 0), (lower or {}).get(key, 0)
        cap, low = self.capital[key] + story_cap, self.lower[key] + story_low
        if cap < MIN_NAME_COUNT:
            return False
        story_only = story_cap >= MIN_NAME_COUNT and story_low == 0
        return cap >= (STORY_NAME_SHARE if story_only else NAME_SHARE) * (cap + low)

    def names(self, story: str) -> Counter:
        """The story's names (in their capitalized form) and how often each occurs, in order of first use."""
        capital, lower = _case_counts(story)
        names = Counter()
        for word, _ in tokens(story):
            if "'" not in word and "\u2019" not in word and self.is_name(word, capital, lower):
                names[word[0].upper() + word[1:].lower()] += 1
        return names

    def content_words(self, story: str, names: Iterable[str] = ()) -> list[str]:
        """The story's words a request may name (module docstring), lowercased, in order of first use."""
        skip = {n.lower() for n in names}
        seen = {}
        for word, _ in tokens(story):
            key = word.lower()
            if key in seen or key in skip or key in STOPWORDS or len(key) < 3 or not key.isalpha():
                continue
            seen[key] = (MIN_DF <= self.share(key) <= MAX_DF and key not in NOT_NAMES
                         and not self.is_name(key[0].upper() + key[1:]))
        return [w for w, ok in seen.items() if ok]


def _case_counts(story: str) -> tuple[Counter, Counter]:
    capital, lower = Counter(), Counter()
    for word, initial in tokens(story):
        if not initial and word.isalpha():
            (capital if word[0].isupper() else lower)[word.lower()] += 1
    return capital, lower


def has_dialogue(story: str) -> bool:
    """Whether the story holds quoted speech: a pair of straight or curly double quotes around some letters."""
    return re.search(r"[\"\u201c][^\"\u201c\u201d]*[A-Za-z][^\"\u201c\u201d]*[\"\u201d]", story) is not None


def sentences(story: str) -> list[str]:
    """The story's narration sentences (text up to . ! or ?, not across lines), stripped: none inside quotes."""
    found = []
    for match in _SENTENCE.finditer(story):
        before = story[: match.start()]
        inside = before.count('"') % 2 or before.count("\u201c") > before.count("\u201d")
        if not inside:
            found.append(match.group().strip())
    return found


def sentence_choices(story: str) -> list[str]:
    """The sentences a request may ask for: SENTENCE_WORDS words, no quotes, not the story's first sentence."""
    lo, hi = SENTENCE_WORDS
    return [s for s in sentences(story)[1:]
            if lo <= len(s.split()) <= hi and not any(q in s for q in QUOTES) and s[0].isupper()]


# Each phrasing: (opening, name, dialogue, words, closing mark, sentence). "{name}", "{words}" and "{sentence}"
# are filled in; a part the request does not ask for is left out.
PHRASINGS = (
    ("Write a story", " about {name}", " with dialogue", " that uses {words}", ".",
     " It must contain the sentence \"{sentence}\""),
    ("Tell me a story", " where the main character is called {name}", " with some dialogue",
     " using {words}", ".", " Somewhere in it, write: \"{sentence}\""),
    ("Please write a short story", " about a character named {name}", " in which the characters talk",
     ". Include {words}", ".", " Use this sentence in it: \"{sentence}\""),
    ("Can you write a story", " about {name}", " with people talking in quotes", " with {words} in it", "?",
     " It should include the sentence \"{sentence}\""),
    ("I would like a story", " starring {name}", " that has dialogue", " that includes {words}", ".",
     " Put in the sentence \"{sentence}\""),
    ("Make up a story", " for a child about {name}", " where characters speak to each other", " with {words}",
     ".", " Include the line \"{sentence}\""),
    ("Could you tell me a story", " whose hero is named {name}", " with dialogue", " that uses {words}", "?",
     " Make sure it says \"{sentence}\""),
    ("Write a short tale", " about {name}", " with quoted speech", ". Use {words}", ".",
     " The story needs the sentence \"{sentence}\""),
    ("Tell a simple story", " about someone named {name}", " with a conversation", " featuring {words}", ".",
     " Have it contain the sentence \"{sentence}\""),
)


def word_list(words) -> str:
    """"the word ball", "the words ball and park", "the words ball, park and happy"."""
    if len(words) == 1:
        return f"the word {words[0]}"
    return f"the words {', '.join(words[:-1])} and {words[-1]}"


def phrase(words, name, dialogue, sentence, style: int) -> str:
    """The request's text in phrasing number `style` (an index into PHRASINGS)."""
    opening, name_part, dialogue_part, words_part, mark, sentence_part = PHRASINGS[style]
    text = opening + (name_part.format(name=name) if name else "") + (dialogue_part if dialogue else "")
    if words:
        text += words_part.format(words=word_list(words))
    text += mark
    if sentence:
        text += sentence_part.format(sentence=sentence)
    return text


def main_character(story: str, stats: WordStats) -> Optional[str]:
    """The story's most frequent name (ties: the first to appear), or None where it has no name."""
    return _most_frequent(stats.names(story))


def _most_frequent(names: Counter) -> Optional[str]:
    return max(names, key=names.get) if names else None  # max keeps the first of equals: first to appear


def pronouns(story: str) -> str:
    """"she" or "he", whichever set of pronouns the story uses more (she/her/hers/herself against he/him/his/
    himself), or "" where neither does: the main character's, mostly."""
    counts = Counter(PRONOUNS.get(w.lower(), "") for w, _ in tokens(story))
    return "she" if counts["she"] > counts["he"] else "he" if counts["he"] > counts["she"] else ""


def main_characters(stories: Iterable[str], stats: WordStats) -> dict[str, str]:
    """Each main character's name in `stories` (sorted) -> "she" or "he" where at least 2/3 of its stories with a
    pronouns() agree, else "": what rename_main draws from."""
    seen: dict[str, Counter] = {}
    for story in stories:
        if name := main_character(story, stats):
            seen.setdefault(name, Counter())[pronouns(story)] += 1
    kinds = {}
    for name in sorted(seen):
        said = seen[name]["she"] + seen[name]["he"]
        kinds[name] = next((k for k in ("she", "he") if said and seen[name][k] >= 2 / 3 * said), "")
    return kinds


def rename_main(story: str, stats: WordStats, names: dict[str, str], rng: random.Random) -> str:
    """The story with its main character's name, wherever it stands as a word ("Lily's" too), replaced by one of
    `names` (main_characters) drawn uniformly: one the story does not already use, and where the story's
    pronouns() say "she" or "he", one of that kind, so that "Lily ... she" never becomes "Max ... she". The story
    as it is where it has no name, or no name is left to draw."""
    old = main_character(story, stats)
    used, kind = {w.lower() for w, _ in tokens(story)}, pronouns(story)
    choices = [n for n, k in names.items() if n.lower() not in used and (k == kind or not kind)]
    if old is None or not choices:
        return story
    return re.sub(rf"(?<![A-Za-z]){re.escape(old)}(?![A-Za-z])", rng.choice(choices), story)


def derive(story: str, stats: WordStats, rng: random.Random, max_words: int = WORDS) -> Request:
    """A request that `story` satisfies, naming up to max_words words: see the module docstring for what it names
    and how it is drawn."""
    names = stats.names(story)
    name = _most_frequent(names)
    candidates = stats.content_words(story, names)
    words = tuple(rng.sample(candidates, min(max_words, len(candidates))))
    dialogue = has_dialogue(story)
    choices = sentence_choices(story)
    sentence = rng.choice(choices) if choices and rng.random() < SENTENCE_SHARE else None
    text = phrase(words, name, dialogue, sentence, rng.randrange(len(PHRASINGS)))
    return Request(text, words, name, dialogue, sentence)


def derive_all(stories: Iterable[str], stats: WordStats, seed: int) -> Iterator[Request]:
    """derive() for each story; story i draws from random.Random(f"{seed}:{i}"), so any one can be redone alone."""
    for i, story in enumerate(stories):
        yield derive(story, stats, random.Random(f"{seed}:{i}"))
