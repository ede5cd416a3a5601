"""What a completion request may ask for: one table, read by the API's checks and by the page's form.

Defaults and ranges are `nanoslm generate`'s: read from nanoslm.config (Sampling() and its bounds). Every
violation is reported as an ApiError naming the field and its allowed range.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..config import MAX_NEW_TOKENS, MAX_TEMPERATURE, Sampling
from ..gpt2 import N_VOCAB

DEFAULT = Sampling()

MAX_BODY_BYTES = 4 * 1024 * 1024  # larger request bodies are refused before they are parsed
MAX_PROMPT_CHARS = 20_000  # far more than any model's context: the engine keeps the last block_size tokens
MAX_STOP = 4  # stop sequences per request, as OpenAI's API
MAX_STOP_CHARS = 100
MAX_ROWS = 8  # prompts x n: the stories one request makes together


class ApiError(Exception):
    """A request the server refuses: HTTP status, a one-line message, and the offending field (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limit:
    """A numeric field: its type, range, default and the value(s) meaning "off"."""

    name: str  # the API's field name
    label: str  # the page's label
    kind: type  # int or float
    low: float
    high: float
    default: Any
    low_open: bool = False  # low itself is not allowed
    off: Optional[int] = None  # this value (or null) turns the setting off
    step: Optional[float] = None  # the page's input step
    help: str = ""
    hint: str = ""  # the page's one-line note under the field

    def describe(self, high: Optional[float] = None) -> str:
        high = self.high if high is None else high
        if self.kind is int:
            text = f"an integer from {self.low} to {high}"
        else:
            text = f"a number {'greater than' if self.low_open else 'from'} {self.low:g} {'up ' if self.low_open else ''}to {high:g}"
        if self.off is not None:
            text += f", or {self.off} or null for off"
        return text

    def check(self, value: Any, high: Optional[float] = None) -> Any:
        """The value if it is allowed (None for off); ApiError naming the field and its range otherwise."""
        high = self.high if high is None else high
        if value is None and self.off is not None:
            return None
        bad = ApiError(400, f"{self.name} must be {self.describe(high)}; got {_show(value)}", param=self.name,
                       code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad
                value = int(value)
        elif not math.isfinite(value):
            raise bad
        if self.off is not None and value == self.off:
            return None
        if value < self.low or value > high or (self.low_open and value == self.low):
            raise bad
        return self.kind(value)

    def page(self) -> dict:
        return {"name": self.name, "label": self.label, "type": self.kind.__name__, "min": self.low, "max": self.high,
                "min_exclusive": self.low_open, "default": self.default, "off": self.off, "step": self.step,
                "help": self.help, "hint": self.hint, "allowed": self.describe()}


TEMPERATURE = Limit("temperature", "Temperature", float, 0.0, MAX_TEMPERATURE, DEFAULT.temperature, step=0.05,
                    help="randomness: lower is safer; 0 always picks the most likely token",
                    hint=f"0 to {MAX_TEMPERATURE:g}; 0 = greedy")
TOP_K = Limit("top_k", "Top-k", int, 1, N_VOCAB, DEFAULT.top_k, off=0, step=1,
              help="sample among the k most likely tokens; 0 = all (at most the model's vocabulary)",
              hint=f"1 to {N_VOCAB}; 0 = all")
TOP_P = Limit("top_p", "Top-p", float, 0.0, 1.0, DEFAULT.top_p, low_open=True, step=0.01,
              help="nucleus: the fewest most likely tokens holding this much probability; 1 = off",
              hint="over 0, up to 1; 1 = off")
MAX_TOKENS = Limit("max_tokens", "Max tokens", int, 1, MAX_NEW_TOKENS, DEFAULT.max_new_tokens, step=1,
                   help="the story ends at <|endoftext|> or after this many new tokens", hint=f"1 to {MAX_NEW_TOKENS}")
SEED = Limit("seed", "Seed", int, 0, 2**32 - 1, None, step=1,
             help="the same seed and settings write the same story; empty = a random one",
             hint="empty = random")
N = Limit("n", "Stories", int, 1, MAX_ROWS, 1, step=1, help="stories per prompt; story i uses seed + i")

SAMPLING_FIELDS = (TEMPERATURE, TOP_K, TOP_P, MAX_TOKENS, SEED)  # the page's form, in its order


def settings() -> dict:
    """Everything the page needs to build its form with the API's own defaults and ranges."""
    return {"fields": [f.page() for f in SAMPLING_FIELDS], "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_stop": MAX_STOP}


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value[:40] + ("..." if len(value) > 40 else ""))
    return text if len(text) <= 60 else text[:57] + "..."
