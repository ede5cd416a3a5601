"""Requests derived from stories: each asks only for what its own story does, deterministically, and reads well."""

import json
import os
import random
import subprocess
import sys

import pytest
from conftest import NAMES, REPO, make_stories

from nanoslm import follow
from nanoslm.errors import UserError
from nanoslm.requests import (MAX_DF, MIN_DF, PHRASINGS, SENTENCE_WORDS, STOPWORDS, TRAIN_WORDS, WORDS, Request,
                              WordStats, derive, derive_all, has_dialogue, main_character, main_characters,
                              pronouns, rename_main, sentence_choices)

# Stories richer than make_stories: narration sentences to ask for, straight quotes, names mid-sentence.
EXTRA = [
    "One day, a small dog named Rex found a red ball in the garden. Rex ran to show it to his friend Ben. "
    "Ben laughed. \"Let's play!\" said Ben. They played until the sun went down. Rex was very tired.",
    "Once upon a time, there was a girl named Zoe. Zoe liked to paint. She painted a big tree and a blue bird. "
    "Her mom loved the picture. The picture hung on the wall. Zoe smiled every time she saw it.",
    "The sun was hot. Tom and Lily went to the beach. Tom built a castle with sand. Lily found a pretty shell. "
    "Then a wave came and took the castle away. Tom was sad, but Lily gave him the shell.",
]


@pytest.fixture(scope="module")
def stats():
    return WordStats.from_stories(make_stories(300, seed=1) + EXTRA * 20)


def stories():
    return make_stories(40, seed=2) + EXTRA


def test_every_request_is_met_by_its_own_story(stats):
    """A derived request its own story fails would teach the model to ignore requests, and break the score."""
    requests = list(derive_all(stories(), stats, seed=7))
    for request, story in zip(requests, stories()):
        scores = follow.score(request, story)
        assert all(v in (None, True, 1.0) for v in scores.values()), (request, scores)
    assert all(r.words for r in requests) and all(r.name for r in requests)
    assert any(r.dialogue for r in requests) and any(r.sentence for r in requests)


def test_a_train_request_may_name_more_words(stats):
    """derive's max_words: as many of the story's candidate words as asked for, where it has them."""
    counts = set()
    for story in stories():
        available = len(stats.content_words(story, stats.names(story)))
        for most in (WORDS, TRAIN_WORDS):
            assert len(derive(story, stats, random.Random(0), most).words) == min(most, available)
        counts.add(min(TRAIN_WORDS, available))
    assert max(counts) > WORDS, "the test wants a story with more candidate words than a held-out request names"


def test_same_seed_same_requests_and_another_seed_others(stats):
    """Reruns of the instruct stage must write the same file; a new seed must draw anew."""
    first = list(derive_all(stories(), stats, seed=3))
    assert first == list(derive_all(stories(), stats, seed=3))
    assert first != list(derive_all(stories(), stats, seed=4))


def test_each_story_draws_alone(stats):
    """Story i's request depends on its own index and seed only, not on which stories came before it."""
    everything = list(derive_all(stories(), stats, seed=3))
    assert derive(stories()[5], stats, random.Random("3:5")) == everything[5]


def test_requests_do_not_depend_on_the_python_hash_seed():
    """Set or dict order of strings varies between processes; the requests file must not."""
    code = ("import json; from conftest import make_stories; from nanoslm.requests import WordStats, derive_all; "
            "s = WordStats.from_stories(make_stories(100, seed=1)); "
            "print(json.dumps([r.to_dict() for r in derive_all(make_stories(20, seed=2), s, seed=5)]))")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed,
                   PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert outs[0] == outs[1] and json.loads(outs[0])


def test_sentence_initial_words_are_never_names(stats):
    """"The", "Once" or "Then" as a main character would ask for a story about nobody."""
    story = ("Once upon a time, a cat named Tibby lived in a house. The cat liked milk. Then Tibby saw a mouse. "
             "One day, the mouse said hello to Tibby. Tibby said hello back.")
    names = stats.names(story)
    assert list(names) == ["Tibby"] and names["Tibby"] == 4
    assert derive(story, stats, random.Random(0)).name == "Tibby"


def test_main_character_is_the_most_frequent_name(stats):
    story = "Ben met Lily at the park. Lily had a kite. Lily and Ben flew the kite. Then Lily went home."
    assert derive(story, stats, random.Random(0)).name == "Lily"


def test_renaming_the_main_character_replaces_each_use_of_the_name_as_a_word(stats):
    """Every use of the main character's name as a word, possessives too, becomes one new name the story does not
    use yet; other names and words that merely begin with it stay; derive then asks for the new name."""
    story = "Lily met Ben at the park. Lily's kite was red. Ben liked Lilyanne's hat. Lily and Ben flew the kite."
    assert main_character(story, stats) == "Lily" and pronouns(story) == ""
    pool = {"Ben": "he", "Lily": "she", "Zoe": "she", "Rex": "he"}
    drawn = set()
    for seed in range(20):
        renamed = rename_main(story, stats, pool, random.Random(seed))
        new = renamed.split()[0]
        drawn.add(new)
        assert renamed == story.replace("Lily met", f"{new} met").replace("Lily's", f"{new}'s").replace(
            "Lily and", f"{new} and")
        assert derive(renamed, stats, random.Random(0)).name == new
    assert drawn == {"Zoe", "Rex"}  # never a name the story already uses, nor its own; either kind without pronouns
    nameless = "The cat sat on the mat. The cat was happy."
    assert rename_main(nameless, stats, pool, random.Random(0)) == nameless
    assert rename_main(story, stats, {"Ben": "he", "Lily": "she"}, random.Random(0)) == story  # none left to draw


def test_a_renamed_character_keeps_the_kind_its_pronouns_say(stats):
    """"Lily ... she" becomes another "she" name, never "Max ... she"; a story whose pronouns say nothing takes
    any name."""
    story = "Lily found a shell. She gave it to her mom. Lily was happy, and her mom hugged her."
    assert pronouns(story) == "she" and pronouns("Tom ran. He fell, and his dog licked him.") == "he"
    pool = {"Zoe": "she", "Rex": "he", "Sky": "", "Ann": "she"}
    drawn = {rename_main(story, stats, pool, random.Random(seed)).split()[0] for seed in range(30)}
    assert drawn == {"Zoe", "Ann"}


def test_main_characters_are_each_storys_own_once_sorted_with_their_pronouns(stats):
    found = main_characters(stories(), stats)
    assert list(found) == sorted({main_character(s, stats) for s in stories()} - {None})
    assert set(found.values()) <= {"she", "he", ""}
    tiny = ["Lily ran. She fell.", "Lily sang. She smiled.", "Lily hid. He looked for Lily.",
            "Max ran. He fell.", "Max sat. She patted Max."]  # Lily: she in 2 of 3; Max: 1 of 2 each way
    assert main_characters(tiny, WordStats.from_stories(tiny * 5)) == {"Lily": "she", "Max": ""}


def test_a_noun_used_as_a_name_in_one_story_is_its_name():
    """Spot is a dog's name in some stories and a noun in others: capitalized in every mid-sentence use of this
    story (and half the train uses), it is this story's name; in lower case here, it is not."""
    train = ["The dog Spot ran. I saw Spot and Spot saw me.", "There was a red spot on the ball, a big spot."]
    stats = WordStats.from_stories(train)
    assert not stats.is_name("Spot")
    assert list(stats.names("A puppy named Spot liked to dig. Every day Spot dug a hole.")) == ["Spot"]
    assert not stats.names("Spot saw a spot of mud. He named it Spot.")


@pytest.mark.parametrize("story, expected", [
    ("Tom said, \"I like it.\"", True),
    ("Tom said, \u201cI like it.\u201d", True),
    ("\u201cHi,\u201d said Lily.", True),
    ("Tom didn't like Lily's hat. It wasn\u2019t his.", False),  # apostrophes are not quotes
    ("Tom said, \"I like", False),  # an opening quote alone is no speech
    ("Tom said nothing.", False),
])
def test_dialogue_detected_with_straight_and_curly_quotes(story, expected):
    assert has_dialogue(story) is expected


def test_required_words_are_common_content_words_not_names(stats):
    """Stopwords would be met by any story; rare words the model never learned; the name is asked for apart."""
    for request in derive_all(stories(), stats, seed=11):
        for word in request.words:
            assert word.islower() and word not in STOPWORDS and len(word) >= 3
            assert MIN_DF <= stats.share(word) <= MAX_DF, (word, stats.share(word))
            assert word not in {n.lower() for n in NAMES} | {(request.name or "").lower()}
        assert len(set(request.words)) == len(request.words) <= 3


def test_required_sentence_is_a_short_narration_sentence_of_the_story(stats):
    lo, hi = SENTENCE_WORDS
    seen = 0
    for story in EXTRA * 5:
        for seed in range(20):
            request = derive(story, stats, random.Random(seed))
            if request.sentence:
                seen += 1
                assert request.sentence in story and not story.startswith(request.sentence)
                assert lo <= len(request.sentence.split()) <= hi and '"' not in request.sentence
    assert seen
    assert sentence_choices('Tom ran. She said, "Come here right now please." Tom came back home fast.') == [
        "Tom came back home fast."]  # not the first sentence, nor one inside quotes


def test_text_names_every_constraint_in_varied_phrasings(stats):
    """The model learns constraints from the text alone, and a person's own wording should resemble one of ours."""
    requests = [derive(s, stats, random.Random(seed)) for seed in range(6) for s in stories()]
    for request in requests:
        for word in request.words:
            assert f" {word}" in request.text
        if request.name:
            assert request.name in request.text
        if request.sentence:
            assert f"\"{request.sentence}\"" in request.text
    openings = {r.text.split(" about ")[0].split(" with")[0].split(" that")[0].split(" using")[0] for r in requests}
    assert len(PHRASINGS) >= 8 and len(openings) >= 8


def test_story_without_common_content_words_still_gets_a_request(stats):
    request = derive("Zorp blinked.", stats, random.Random(0))
    assert request.words == () and request.text.startswith(tuple(p[0] for p in PHRASINGS))


def test_request_json_round_trip():
    request = Request("Write a story about Tom.", ("ball", "park"), "Tom", True, "Tom ran home.")
    line = request.to_json()
    assert json.loads(line)["words"] == ["ball", "park"]
    assert Request.from_json(line) == request
    assert Request.from_dict({"text": "Write a story."}) == Request("Write a story.")


@pytest.mark.parametrize("line", ['{"words": ["a"]}', '{"text": "Hi", "words": "ball"}', '{"text": "Hi", '
                                  '"dialogue": "yes"}', "not json", '["text"]'])
def test_a_users_malformed_request_is_a_one_line_user_error(line):
    with pytest.raises(UserError) as err:
        Request.from_json(line, where="mine.jsonl:3")
    assert "mine.jsonl:3" in str(err.value) and "\n" not in str(err.value)
