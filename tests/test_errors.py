"""errors.brief: a technical cause short enough for a one-line message, cut between words."""

from nanoslm.errors import brief


def test_short_messages_are_kept_whole_on_one_line():
    assert brief(ValueError("bad\n  value")) == "bad value"
    assert brief(KeyError()) == "KeyError"


def test_long_messages_are_cut_at_a_word_boundary(monkeypatch):
    monkeypatch.delenv("NANOSLM_DEBUG", raising=False)
    words = "Weights only load failed because the `weights_only` argument in `torch.load` from PyTorch changed"
    text = brief(RuntimeError(words * 3), limit=60)
    assert text.endswith(" ...") and len(text) <= 64
    assert words.startswith(text.removesuffix(" ..."))  # whole words only: no "fr)" stub
    assert text.removesuffix(" ...").split()[-1] in words.split()


def test_debug_keeps_the_whole_message(monkeypatch):
    monkeypatch.setenv("NANOSLM_DEBUG", "1")
    assert brief(RuntimeError("x " * 200), limit=10) == " ".join(["x"] * 200)
