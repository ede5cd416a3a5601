"""The instruction-following checks, their summary, the chance baseline and the copy rate against train."""

import random

import pytest
from conftest import make_stories

from nanoslm.follow import (chance, contains_sentence, copy_rate, derangement, finished, forms, score, summarize,
                            train_ngrams)
from nanoslm.requests import Request


@pytest.mark.parametrize("asked, written", [
    ("played", "playing"), ("play", "played"), ("plays", "player"), ("big", "bigger"), ("big", "biggest"),
    ("happy", "happily"), ("happy", "happier"), ("stop", "stopped"), ("running", "runs"), ("hope", "hoping"),
    ("smiled", "smiles"), ("box", "boxes"), ("wishes", "wish"), ("try", "tried"), ("flies", "fly"),
    ("cookies", "cookie"), ("nice", "nicely"), ("kissed", "kiss"), ("open", "opened"), ("Ball", "BALL"),
])
def test_an_inflection_counts_as_the_word(asked, written):
    """A story that writes "playing" for a requested "played" did what was asked."""
    assert score(Request("x", (asked,)), f"Tom was {written} today.")["words"] == 1.0


@pytest.mark.parametrize("asked, written", [
    ("letter", "let"), ("butter", "but"), ("hat", "hated"), ("car", "caring"), ("cares", "cars"),
    ("seed", "see"), ("hoped", "hops"), ("red", "re"), ("cat", "catalog"), ("art", "party"), ("ran", "run"),
])
def test_lookalikes_are_not_inflections(asked, written):
    """A score that counted "let" for "letter" would credit any story; irregular forms are not counted either."""
    assert score(Request("x", (asked,)), f"Tom had a {written} today.")["words"] == 0.0


def test_forms_are_whole_words_of_the_story():
    assert "balls" in forms("ball") and "ball" not in forms("bal")
    assert score(Request("x", ("dog",)), "A hotdog and a dogma.")["words"] == 0.0
    assert score(Request("x", ("dog",)), "The dog's bone.")["words"] == 1.0  # possessive: still the word


def test_words_score_is_the_share_present_and_all_words_needs_every_one():
    scores = score(Request("x", ("ball", "kite", "moon")), "Tom threw the ball. The kites flew.")
    assert scores["words"] == pytest.approx(2 / 3) and scores["all_words"] is False
    assert score(Request("x", ("ball", "kites")), "The ball hit a kite.")["all_words"] is True


def test_name_must_be_the_word_itself():
    """"Timmy" is another character than "Tim"; "Tim's" still names Tim."""
    assert score(Request("x", name="Tim"), "Timmy played.")["name"] is False
    assert score(Request("x", name="Tim"), "It was Tim's ball.")["name"] is True
    assert score(Request("x", name="Tim"), "tim played.")["name"] is True


def test_checks_not_asked_for_are_none():
    scores = score(Request("Write a story."), "Tom ran.")
    assert {k for k, v in scores.items() if v is None} == {"words", "all_words", "name", "dialogue", "sentence"}


def test_dialogue_check_accepts_straight_and_curly_quotes():
    asked = Request("x", dialogue=True)
    assert score(asked, 'Tom said, "Hi."')["dialogue"] and score(asked, "Tom said, \u201cHi.\u201d")["dialogue"]
    assert not score(asked, "Tom didn't say hi.")["dialogue"]


def test_sentence_match_forgives_spacing_quotes_and_case_but_not_a_partial_word():
    assert contains_sentence("Once.  Then\nthe  dog \u201cbarked\u201d at Tom\u2019s cat.",
                             'The dog "barked" at Tom\'s cat.')
    assert not contains_sentence("She ran. Then it rained.", "He ran.")
    assert contains_sentence("He ran. Then it rained.", "He ran.")
    assert score(Request("x", sentence="The sun was hot."), "Tom ran. The sun was hot.")["sentence"] is True
    assert score(Request("x", sentence="The sun was hot."), "Tom ran. The sun was warm.")["sentence"] is False


@pytest.mark.parametrize("story, ended, expected", [
    ("Tom went home.", None, True),
    ("Tom said, \u201cGood night!\u201d", None, True),
    ('Tom asked, "Why?"', True, True),
    ("Tom went to the", None, False),  # cut mid-sentence
    ("Tom went to the", True, False),  # the generator ended it, but mid-sentence
    ("Tom went home.", False, False),  # stopped at its token limit: cut, though after a full stop
    ("Tom went home.\n\n", True, True),
])
def test_finished_needs_a_final_stop_and_not_a_cut(story, ended, expected):
    assert finished(story, ended) is expected
    assert score(Request("x"), story, ended)["finished"] is expected


def test_summary_averages_each_check_over_the_requests_that_ask_for_it():
    """A name score diluted by requests without a name would understate (or flatter) the model."""
    requests = [Request("x", ("ball",), "Tom"), Request("x", ("ball",)), Request("x", ("ball",), "Sue")]
    stories = ["Tom had a ball.", "A ball", "Tom had a ball."]
    summary = summarize(score(r, s) for r, s in zip(requests, stories))
    assert summary["name"] == 0.5 and summary["counts"]["name"] == 2
    assert summary["words"] == 1.0 and summary["finished"] == pytest.approx(2 / 3)
    assert summary["dialogue"] is None and summary["counts"]["dialogue"] == 0 and summary["requests"] == 3


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_chance_pairs_every_request_with_another_story(n):
    for seed in range(5):
        order = derangement(n, seed)
        assert sorted(order) == list(range(n)) and all(j != i for i, j in enumerate(order))
    assert derangement(n, 1) == derangement(n, 1)


def test_chance_baseline_scores_requests_against_other_stories():
    """Each story holds only its own word: self-scores are 1, the chance baseline finds none of them."""
    words = ["apple", "kite", "moon", "boat", "drum", "frog"]
    stories = [f"Tom saw a {w}." for w in words]
    requests = [Request("x", (w,), "Tom") for w in words]
    assert summarize(score(r, s) for r, s in zip(requests, stories))["words"] == 1.0
    baseline = chance(requests, stories, seed=0)
    assert baseline["words"] == 0.0 and baseline["name"] == 1.0 and baseline["requests"] == 6
    assert chance(requests, stories, seed=0) == baseline
    with pytest.raises(ValueError):
        chance(requests, stories[:-1], seed=0)


def test_a_train_story_is_all_copied_and_shuffled_words_are_new():
    train = make_stories(50, seed=1)
    table = train_ngrams(train)
    copied = copy_rate(train[:3], table)
    assert copied["copied"] == 1.0 and copied["longest"] == max(len(s.split()) for s in train[:3])
    words = " ".join(train).split()
    random.Random(0).shuffle(words)
    shuffled = copy_rate([" ".join(words[:200])], table)
    assert shuffled["ngrams"] == 193 and shuffled["copied"] < 0.05 and shuffled["longest"] < 12


def test_copy_rate_finds_a_copied_span_inside_new_text():
    table = train_ngrams(["one two three four five six seven eight nine ten", "alpha beta gamma"])
    result = copy_rate(["zig zag one two three four five six seven eight nine zog"], table)
    assert result["longest"] == 9 and result["longest_text"] == "one two three four five six seven eight nine"
    assert result["copied"] == pytest.approx(2 / 5)
    # n-grams never run across two train stories
    assert copy_rate(["nine ten alpha beta gamma a b c"], table)["copied"] == 0.0
    assert copy_rate(["short story"], table) == {"ngrams": 0, "copied": 0.0, "longest": 0, "longest_mean": 0.0,
                                                 "longest_text": "", "n": 8}
