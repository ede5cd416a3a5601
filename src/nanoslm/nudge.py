"""A decoding-time aid for requests (an option of the instruct stage, scored apart from the model's own answers):
raise the logits of each requested word's first token, as a story writes it mid-sentence, until the row has written
one of them. A model that needs this to use a word has not learned to; the aid shows how far sampling alone can
carry it. Knows nothing of models: an Engine.stream processor over token ids.
"""

from typing import Sequence

import tiktoken
import torch

from .requests import Request


def first_tokens(word: str, enc: tiktoken.Encoding) -> frozenset[int]:
    """The first token of the word as a story writes it mid-text: after a space, lower case or capitalized (the
    forms without a space would glue it to the word before)."""
    return frozenset(enc.encode_ordinary(" " + form)[0] for form in {word, word.capitalize()})


class Nudge:
    """An Engine.stream processor adding `strength` to the logits of each requested word not yet written."""

    def __init__(self, requests: Sequence[Request], prompt_lengths: Sequence[int], enc: tiktoken.Encoding,
                 strength: float):
        self.words = [[first_tokens(w, enc) for w in r.words] for r in requests]
        self.starts, self.strength = list(prompt_lengths), strength

    def __call__(self, rows: list[int], seqs: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # a copy where the model's were bfloat16; never the model's own tensor
        boost = torch.zeros_like(logits)
        for i, r in enumerate(rows):
            written = set(seqs[r][self.starts[r]:])
            for ids in self.words[r]:
                if not ids & written:
                    boost[i, list(ids)] = self.strength
        return logits + boost
