"""Windows of a token array as model inputs and next-token targets: what train and evaluate feed the model."""

import numpy as np
import torch


def windows(data: np.ndarray, offsets: np.ndarray, block_size: int, device: torch.device,
            learn: np.ndarray | None = None):
    """Inputs and next-token targets for windows of block_size tokens starting at `offsets`; with a learn mask
    (one flag per token of data), also which targets are learned (inputs, targets, learn)."""
    index = offsets[:, None] + np.arange(block_size + 1)
    rows = _to(torch.from_numpy(data[index].astype(np.int64)), device)
    if learn is None:
        return rows[:, :-1], rows[:, 1:]
    return rows[:, :-1], rows[:, 1:], _to(torch.from_numpy(learn[index[:, 1:]].astype(bool)), device)


def _to(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    if pinned_transfer(device):
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


def pinned_transfer(device: torch.device) -> bool:
    """Whether batches reach `device` from pinned (page-locked) host memory, asynchronously: on CUDA, so the copy
    overlaps the GPU's work. On a CPU there is nothing to copy, and pinning needs a GPU driver."""
    return device.type == "cuda"


def random_offsets(rng: np.random.Generator, data: np.ndarray, count: int, block_size: int) -> np.ndarray:
    return rng.integers(0, len(data) - block_size, size=count)


def step_offsets(rng: np.random.Generator, data: np.ndarray, micro_batches: int, batch_size: int,
                 block_size: int) -> np.ndarray:
    """micro_batches x batch_size random window starts: the fixed validation windows."""
    return random_offsets(rng, data, micro_batches * batch_size, block_size).reshape(micro_batches, batch_size)


class RandomWindows:
    """The train windows drawn at random with replacement, as nanoGPT draws them: one stream of starts from the
    seed, the draw of the trials in docs/experiments.md before 2026-12-03 afternoon, so they rerun exactly.

    Asked for a step out of turn (a resumed run), it replays the stream from the seed to that step: a resumed
    run draws what an uninterrupted one would, with no sampler state in the checkpoint.
    """

    REPLAY_CHUNK = 1 << 20  # starts drawn (and dropped) at a time when replaying: bounds the memory

    def __init__(self, seed: int, tokens: int, block_size: int):
        self.seed, self.high = seed, tokens - block_size
        self._rng, self._next = np.random.default_rng(seed), 0

    def step(self, step: int, micro_batches: int, batch_size: int) -> np.ndarray:
        count = micro_batches * batch_size
        if step != self._next:
            # numpy's Generator.integers gives one stream however the draws are split (tested)
            self._rng, skip = np.random.default_rng(self.seed), step * count
            while skip:
                drawn = min(skip, self.REPLAY_CHUNK)
                self._rng.integers(0, self.high, size=drawn)
                skip -= drawn
        self._next = step + 1
        return self._rng.integers(0, self.high, size=count).reshape(micro_batches, batch_size)


class Passes:
    """The train windows, drawn without replacement: pass e over the data tiles it into windows of block_size
    tokens from a random shift, in a random order, both drawn from (seed, e). Drawing with replacement
    instead shows some stories twice as often as others over a run of a few passes; this way each is seen
    as often as the next, which scored lower validation loss on the small shared sample than RandomWindows
    (docs/experiments.md, 2026-12-03 afternoon).

    A step's windows depend only on the step number, so a resumed run draws what an uninterrupted one would
    and every rank draws the same (nothing to save, nothing to broadcast).
    """

    def __init__(self, seed: int, tokens: int, block_size: int):
        self.seed, self.block_size = seed, block_size
        self.slots = max(1, (tokens - block_size) // block_size)  # windows per pass; each needs block_size + 1
        self.max_shift = min(block_size - 1, tokens - 1 - self.slots * block_size)
        self._pass, self._shift, self._order = -1, 0, np.empty(0, np.int64)

    def _tiling(self, pass_: int) -> tuple[int, np.ndarray]:
        if pass_ != self._pass:  # a pass lasts many steps: draw its tiling once
            rng = np.random.default_rng([self.seed, pass_])
            self._pass, self._shift, self._order = pass_, int(rng.integers(0, self.max_shift + 1)), \
                rng.permutation(self.slots)
        return self._shift, self._order

    def step(self, step: int, micro_batches: int, batch_size: int) -> np.ndarray:
        """Window starts of optimizer step `step`, (micro_batches, batch_size)."""
        count = micro_batches * batch_size
        out = np.empty(count, np.int64)
        for i, n in enumerate(range(step * count, (step + 1) * count)):
            shift, order = self._tiling(n // self.slots)
            out[i] = shift + order[n % self.slots] * self.block_size
        return out.reshape(micro_batches, batch_size)


class Stories:
    """The train windows anchored on the stories: pass e shows each story in a window that holds it whole from its
    end-of-text on (its request too, in a conversation), in a random order; a story longer than the context gets
    one window per block_size tokens of it. Tiling windows cut most conversations in two, and the story's second
    part was learned without the request in view (docs/experiments.md, 2026-12-05 13:00).

    Each window begins a random number of tokens before its story (at most what the context has to spare after
    it), drawn from (seed, e) as the order is, so a window's first positions hold any token, as validation's
    windows and a long prompt's do, not always an end-of-text. The rest of the context after the story is the
    next story's beginning. A step's windows depend on the step alone, as with Passes.
    """

    SCAN = 1 << 24  # tokens read at a time to find the stories: memory stays flat on the hub's split

    def __init__(self, seed: int, data: np.ndarray, block_size: int, eot: int):
        self.seed, self.block_size = seed, block_size
        bounds = np.concatenate([[0], *(np.flatnonzero(data[i : i + self.SCAN] == eot) + i
                                        for i in range(0, len(data), self.SCAN))])
        bounds = np.unique(bounds)  # a split begins with an end-of-text: 0 once
        bounds = bounds[bounds < len(data) - 1]  # ... and ends with one, which begins no story
        lengths = np.diff(np.append(bounds, len(data)))  # a story and the end-of-text before it
        chunks = np.maximum(1, -(-lengths // block_size))
        self.starts = np.repeat(bounds, chunks) + block_size * (np.arange(chunks.sum()) - np.repeat(
            np.cumsum(chunks) - chunks, chunks))  # a long story: a window every block_size tokens
        self.lead = np.repeat(np.maximum(0, block_size - lengths), chunks) * (np.repeat(chunks, chunks) == 1)
        self.last = len(data) - block_size - 1  # the latest start whose window (and its next token) is in the data
        self.slots = len(self.starts)
        self._pass, self._order, self._starts = -1, np.empty(0, np.int64), np.empty(0, np.int64)

    def _draw(self, pass_: int) -> tuple[np.ndarray, np.ndarray]:
        if pass_ != self._pass:
            rng = np.random.default_rng([self.seed, pass_])
            back = np.minimum(self.starts, (rng.random(self.slots) * (self.lead + 1)).astype(np.int64))
            self._pass, self._order = pass_, rng.permutation(self.slots)
            self._starts = np.clip(self.starts - back, 0, self.last)
        return self._order, self._starts

    def step(self, step: int, micro_batches: int, batch_size: int) -> np.ndarray:
        """Window starts of optimizer step `step`, (micro_batches, batch_size)."""
        count = micro_batches * batch_size
        out = np.empty(count, np.int64)
        for i, n in enumerate(range(step * count, (step + 1) * count)):
            order, starts = self._draw(n // self.slots)
            out[i] = starts[order[n % self.slots]]
        return out.reshape(micro_batches, batch_size)


def train_windows(kind: str, seed: int, data: np.ndarray, block_size: int, eot: int):
    """train.windows' sampler over the train split `data`: "stories", "passes" or "random" (eot: the id between
    stories); its step(step, micro_batches, batch_size) gives the window starts of an optimizer step."""
    if kind == "stories":
        return Stories(seed, data, block_size, eot)
    return {"passes": Passes, "random": RandomWindows}[kind](seed, len(data), block_size)
