"""Generation: continue token prompts with a key/value cache, in batches, reproducibly.

With the cache, each new token costs one position's forward pass instead of the whole context's. The cache
path yields exactly the tokens of the plain path (`use_cache=False`: the whole context every step), for the
same settings and generators:

- every row samples from its own torch.Generator, one draw per token, so a row's tokens do not depend on
  the other rows of its batch (sample i of a batch = the same prompt and generator alone);
- prompts are prefilled one by one (no padding), then all rows decode together, each at its own position;
- the model sees at most block_size tokens. Once a row's context is longer, the plain path crops it to the
  last block_size tokens every step, which shifts every position (learned position embeddings), so there
  is nothing to reuse: such a row leaves the cache and runs the plain forward pass on its window.
"""

import contextlib
import sys
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from . import hardware
from .config import Sampling
from .model import GPT
from .gpt2 import EOT, N_VOCAB


def generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per row: row i draws from seed + i."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


class KVCache:
    """Keys and values of every layer for a batch of rows, up to block_size tokens each.

    `rows` names the sequence each batch index holds; `lengths` counts the tokens cached per row.
    """

    def __init__(self, model: GPT, rows: Sequence[int], dtype: Optional[torch.dtype] = None):
        cfg, param = model.config, next(model.parameters())
        shape = (cfg.n_layer, len(rows), cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, dtype=dtype or param.dtype, device=param.device)  # dtype: autocast's, if on
        self.v = torch.zeros_like(self.k)
        self.rows = list(rows)
        self.lengths = [0] * len(rows)

    def prefill(self, i: int, n_tokens: int) -> "CachePass":
        """A pass that fills batch index i with its first n_tokens tokens (a batch of one)."""
        self.lengths[i] = n_tokens
        return CachePass(self.k[:, i : i + 1], self.v[:, i : i + 1], [0], n_tokens)

    def decode(self) -> "CachePass":
        """A pass that appends one token to every row, each at its own position."""
        step = CachePass(self.k, self.v, self.lengths, 1)
        self.lengths = [n + 1 for n in self.lengths]
        return step

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every row not in `rows` (which keeps the cache's order)."""
        if list(rows) == self.rows:
            return
        index = [self.rows.index(r) for r in rows]
        sel = torch.tensor(index, dtype=torch.long, device=self.k.device)
        self.k, self.v = self.k[:, sel], self.v[:, sel]
        self.rows, self.lengths = list(rows), [self.lengths[i] for i in index]


class CachePass:
    """What one forward pass through the cache needs: the new tokens' positions (`pos`, (B, T)), the attention
    mask, and per layer (`layers`) an `update(k, v)` that stores the new keys/values and returns all of them."""

    def __init__(self, k, v, lengths: list[int], n_new: int):
        device = k.device
        self.pos = torch.tensor(lengths, device=device)[:, None] + torch.arange(n_new, device=device)  # (B, T)
        end = max(lengths) + n_new  # keys beyond this are unused in every row
        if not any(lengths):  # a fresh start: the keys are exactly the new tokens
            self.mask, self.is_causal = None, n_new > 1
        elif n_new == 1 and len(set(lengths)) == 1:  # one new token, all rows alike: it sees every key
            self.mask, self.is_causal = None, False
        else:  # key j is visible to a query at position p when j <= p (slots past a row's length are stale)
            self.mask = (torch.arange(end, device=device) <= self.pos[:, :, None])[:, None]  # (B, 1, T, end)
            self.is_causal = False
        index = self.pos[:, None, :, None]  # (B, 1, T, 1): where the new tokens go
        self.layers = [_LayerCache(self, k[i], v[i], index, end) for i in range(k.size(0))]


class _LayerCache:
    def __init__(self, step: CachePass, k, v, index, end: int):
        self.step, self.k, self.v, self.index, self.end = step, k, v, index, end

    @property
    def mask(self):
        return self.step.mask

    @property
    def is_causal(self):
        return self.step.is_causal

    def update(self, k, v):
        """Store keys and values (B, n_head, T, head_dim) of the new tokens; return those of every cached one."""
        index = self.index.expand(-1, k.size(1), -1, k.size(3))
        self.k.scatter_(2, index, k)
        self.v.scatter_(2, index, v)
        return self.k[:, :, : self.end], self.v[:, :, : self.end]


Processor = Callable[[list[int], list[list[int]], torch.Tensor], torch.Tensor]


class Engine:
    """Generates with a GPT on one device.

    On a device with bfloat16 (hw.dtype), the model is cast to bfloat16 in place: on CPUs with native bf16
    that is faster than autocast, which re-casts the 50K-row head for every token. float16 uses autocast.
    """

    def __init__(self, model: GPT, hw: hardware.Hardware, eot: int = EOT, n_vocab: int = N_VOCAB,
                 end: Optional[int] = None):
        self.model = model.eval()
        if hw.dtype == torch.bfloat16:
            self.model.to(torch.bfloat16)
        self._autocast = hw.autocast if hw.dtype == torch.float16 else contextlib.nullcontext
        self._cache_dtype = hw.dtype if hw.dtype == torch.float16 else None  # keys/values come out of autocast
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size
        self.eot = eot  # a row that samples it ends; -1 = none does (benchmarks)
        self.stops = {eot} if end is None else {eot, end}  # a chat model's reply also ends at <|end|>
        self.start = eot if 0 <= eot < model.config.vocab_size else EOT  # what an empty prompt starts from
        self.n_vocab = min(n_vocab, model.config.vocab_size)  # padded ids past the tokenizer's are never picked

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling, gens: Sequence[torch.Generator],
                 use_cache: bool = True) -> list[list[int]]:
        """The new tokens of each prompt (without the end-of-text token that ended it)."""
        return collect(self.stream(prompts, sampling, gens, use_cache), len(prompts))

    @torch.no_grad()
    def stream(self, prompts: Sequence[Sequence[int]], sampling: Sampling, gens: Sequence[torch.Generator],
               use_cache: bool = True, process: Optional[Processor] = None) -> Iterator[list[Optional[int]]]:
        """Yield, for each step, every row's new token (None where the row has finished).

        Row i samples with gens[i]. A row ends at end-of-text (not yielded) or after max_new_tokens tokens.
        An empty prompt starts from end-of-text; one longer than block_size keeps its last block_size tokens.
        process(rows, seqs, logits), where given, returns the logits to sample from (as transformers' logits
        processors): rows are the rows still going, in the order of the logits' rows; seqs every row's ids so far.
        """
        sampling.check(self.model.config.vocab_size)
        if len(gens) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(gens)} generators")
        seqs = [self._start(p) for p in prompts]
        rows = list(range(len(seqs)))  # the rows still going, in the order of `logits`
        cache = KVCache(self.model, rows, self._cache_dtype) if use_cache else None
        with self._autocast():
            if cache is None:
                logits = self._plain(rows, seqs)
            else:
                logits = torch.cat([self.model(self._tensor([seqs[r]]), kv_cache=cache.prefill(i, len(seqs[r])))
                                    for i, r in enumerate(rows)])
        for step in range(sampling.max_new_tokens):
            if process is not None:
                logits = process(rows, seqs, logits)
            picks = self._sample(logits, sampling, [gens[r] for r in rows])
            going = [(r, t) for r, t in zip(rows, picks) if t not in self.stops]
            if not going:
                return
            out: list[Optional[int]] = [None] * len(seqs)
            for r, t in going:
                out[r] = t
                seqs[r].append(t)
            rows = [r for r, _ in going]
            yield out
            if step + 1 < sampling.max_new_tokens:
                with self._autocast():
                    logits = self._next(rows, seqs, cache)

    def _start(self, prompt: Sequence[int]) -> list[int]:
        if len(prompt) > self.block_size:
            print(f"warning: the prompt has {len(prompt)} tokens, more than the model's context of "
                  f"{self.block_size}; using its last {self.block_size}", file=sys.stderr)
        return list(prompt[-self.block_size :]) or [self.start]

    def _tensor(self, ids) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _next(self, rows: list[int], seqs: list[list[int]], cache: Optional[KVCache]) -> torch.Tensor:
        """Logits (len(rows), vocab) for the next token of each row, after its newest token."""
        if cache is None:
            return self._plain(rows, seqs)
        # rows whose cache is full continue with the plain pass on their window (see the module docstring)
        cache.keep([r for r, n in zip(cache.rows, cache.lengths) if r in rows and n < self.block_size])
        by_row = {}
        if cache.rows:
            last = self._tensor([[seqs[r][-1]] for r in cache.rows])
            by_row.update(zip(cache.rows, self.model(last, kv_cache=cache.decode())))
        windowed = [r for r in rows if r not in by_row]
        if windowed:
            by_row.update(zip(windowed, self._plain(windowed, seqs)))
        return torch.stack([by_row[r] for r in rows])

    def _plain(self, rows: list[int], seqs: list[list[int]]) -> torch.Tensor:
        """Logits without a cache: the whole (cropped) context of each row; rows of equal length run together."""
        contexts = {r: seqs[r][-self.block_size :] for r in rows}
        by_row = {}
        for n in sorted({len(c) for c in contexts.values()}):
            group = [r for r in rows if len(contexts[r]) == n]
            by_row.update(zip(group, self.model(self._tensor([contexts[r] for r in group]))))
        return torch.stack([by_row[r] for r in rows])

    def _sample(self, logits: torch.Tensor, sampling: Sampling, gens: list[torch.Generator]) -> list[int]:
        """One token per row: greedy, or one uniform draw from the row's generator after top-k and top-p.

        The draw inverts the cumulative distribution over the kept tokens in id order, so the pick moves only
        if a probability changes by about the draw's distance to a boundary, not when near-equal
        probabilities happen to sort differently.
        """
        logits = logits[:, : self.n_vocab].float()
        if sampling.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        logits = logits / sampling.temperature
        ids = None  # the token id of each column, when top-k keeps a subset
        if sampling.top_k is not None and sampling.top_k < logits.size(-1):
            logits, ids = torch.topk(logits, sampling.top_k)
        probs = F.softmax(logits, dim=-1)
        if sampling.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p  # the more likely ones suffice
            probs = probs.masked_fill(drop.scatter(-1, order, drop), 0.0)  # the most likely token always stays
        if ids is not None:
            ids, by_id = ids.sort(dim=-1)
            probs = probs.gather(-1, by_id)
        cdf = probs.cumsum(dim=-1).cpu()
        picks = []
        for i, g in enumerate(gens):
            u = torch.rand((), generator=g) * cdf[i, -1]
            picks.append(min(int(torch.searchsorted(cdf[i], u, right=True)), cdf.size(-1) - 1))
        return picks if ids is None else ids.cpu().gather(-1, torch.tensor(picks)[:, None])[:, 0].tolist()


def collect(steps: Iterator[list[Optional[int]]], n_rows: int) -> list[list[int]]:
    """Gather Engine.stream's steps into each row's list of new tokens."""
    new: list[list[int]] = [[] for _ in range(n_rows)]
    for step in steps:
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
    return new
