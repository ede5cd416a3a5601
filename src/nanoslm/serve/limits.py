"""What a completion request may ask for, over nanoslm.sampling's table, for the API and the page; knows no HTTP.

Defaults and ranges are `nanoslm generate`'s: the table's. Every violation is reported as an ApiError naming the
field and its allowed range.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional

from .. import sampling
from ..sampling import Field

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
    """A request's numeric field: a row of the table under the API's name, with the page's label, step and hint."""

    name: str  # the API's field name
    field: Field
    label: str  # the page's label
    step: Optional[float] = None  # the page's input step
    hint: str = ""  # the page's one-line note under the field

    @property
    def default(self) -> Any:
        return self.field.default

    def check(self, value: Any, high: Optional[float] = None) -> Any:
        """The value if it is allowed (None for off); ApiError naming the field and its range otherwise."""
        field = self.field
        if value is None and field.typed_off is not None:
            return None
        bad = ApiError(400, f"{self.name} must be {field.describe(high)}; got {_show(value)}", param=self.name,
                       code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if field.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad
                value = int(value)
        elif not math.isfinite(value):
            raise bad
        if field.typed_off is not None and value == field.typed_off:
            return None
        if not field.allows(value, high):
            raise bad
        return field.kind(value)

    def page(self) -> dict:
        f = self.field
        return {"name": self.name, "label": self.label, "type": f.kind.__name__, "min": f.low, "max": f.high,
                "min_exclusive": f.low_open, "default": f.default, "off": f.typed_off, "step": self.step,
                "help": f.help, "hint": self.hint, "allowed": f.describe()}


TEMPERATURE = Limit("temperature", sampling.TEMPERATURE, "Temperature", step=0.05,
                    hint=f"0 to {sampling.TEMPERATURE.high:g}; 0 = greedy")
TOP_K = Limit("top_k", sampling.TOP_K, "Top-k", step=1,
              hint=f"{sampling.TOP_K.low} to {sampling.TOP_K.high}; {sampling.TOP_K.typed_off} = all")
TOP_P = Limit("top_p", sampling.TOP_P, "Top-p", step=0.01, hint="over 0, up to 1; 1 = off")
MAX_TOKENS = Limit("max_tokens", sampling.MAX_NEW_TOKENS, "Max tokens", step=1,
                   hint=f"{sampling.MAX_NEW_TOKENS.low} to {sampling.MAX_NEW_TOKENS.high}")
SEED = Limit("seed", sampling.SEED, "Seed", step=1, hint="empty = random")
N = Limit("n", Field("n", int, 1, MAX_ROWS, 1, help="stories per prompt; story i uses seed + i"), "Stories", step=1)

SAMPLING_FIELDS = (TEMPERATURE, TOP_K, TOP_P, MAX_TOKENS, SEED)  # the page's form, in its order


def settings() -> dict:
    """Everything the page needs to build its form with the API's own defaults and ranges."""
    return {"fields": [f.page() for f in SAMPLING_FIELDS], "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_stop": MAX_STOP}


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value[:40] + ("..." if len(value) > 40 else ""))
    return text if len(text) <= 60 else text[:57] + "..."
