"""The sampling settings' one table (type, range, what turns each off, help); knows no file, flag or request.

config.Sampling checks params.yaml and every other source against it, `nanoslm generate` and `chat` build their
flags from it, and the server's API and page check requests with it; each says a bad value in its own words, but
the numbers come from here. A setting that can be off is off when it is None (null in params.yaml and JSON);
where a number has to be typed (a flag, the page's number box, a request) `typed_off` is accepted for it and
read as None: it is never stored. Imports nothing heavy: every stage imports it through config.
"""

from dataclasses import dataclass
from typing import Any, Optional

from .gpt2 import N_VOCAB


@dataclass(frozen=True)
class Field:
    """One setting: its type, range, default, what turns it off and what it does."""

    name: str  # config.Sampling's attribute and params.yaml's key under `sample:`
    kind: type  # int or float
    low: float
    high: float
    default: Any  # the CLI's and the API's; the sample stage takes params.yaml's
    help: str  # what it does, for --help and the page
    rule: str = ""  # params.yaml's words for the range (config's errors), formatted with low and high
    low_open: bool = False  # low itself is not allowed
    typed_off: Optional[int] = None  # None: it cannot be off; else the number that stands for None where typed
    vocab_bound: bool = False  # also at most the model's vocabulary, known once a model is loaded

    def allows(self, value: Any, high: Optional[float] = None) -> bool:
        """Whether `value`, of the field's type, is in range (`high` instead of the field's when given); None is
        allowed where the setting can be off."""
        if value is None:
            return self.typed_off is not None
        high = self.high if high is None else high
        return self.low <= value <= high and not (self.low_open and value == self.low)

    def problem(self, value: Any) -> str:
        """What is wrong with a value outside the range, in params.yaml's words: "must be ..., got ..."."""
        return f"must be {self.rule.format(low=self.low, high=self.high)}, got {value}"

    def describe(self, high: Optional[float] = None) -> str:
        """The range in the API's and the page's words, e.g. "an integer from 1 to 10000"."""
        high = self.high if high is None else high
        if self.kind is int:
            text = f"an integer from {self.low} to {high}"
        elif self.low_open:
            text = f"a number greater than {self.low:g} up to {high:g}"
        else:
            text = f"a number from {self.low:g} to {high:g}"
        if self.typed_off is not None:
            text += f", or {self.typed_off} or null for off"
        return text


MAX_NEW_TOKENS = Field(
    "max_new_tokens", int, 1, 10_000, 200,  # 10,000: far past any context here, and a bound for one request's work
    help="the story ends at <|endoftext|> or after this many new tokens", rule="between {low} and {high}")
TEMPERATURE = Field(
    "temperature", float, 0.0, 2.0, 0.8,  # past 2, sampling is close to uniform noise (OpenAI's API has the same bound)
    help="randomness: lower is safer; 0 always picks the most likely token (top-k and top-p then do nothing)",
    rule="from {low:g} (greedy) to {high:g}")
TOP_K = Field(
    "top_k", int, 1, N_VOCAB, 200, typed_off=0, vocab_bound=True,  # high: the largest vocabulary a model here has
    help="sample among the k most likely tokens; off = all of them", rule="at least {low}, or null (off)")
TOP_P = Field(
    "top_p", float, 0.0, 1.0, 1.0, low_open=True,
    help="nucleus: sample among the fewest most likely tokens holding this much probability; 1 = off",
    rule="in ({low:g}, {high:g}] (1.0 = off)")
SEED = Field(  # the sample stage's seed, a request's and a flag's; None = a random one
    "seed", int, 0, 2**32 - 1, None, help="the same seed and settings write the same story")

FIELDS = (MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P)  # config.Sampling's, in its order
