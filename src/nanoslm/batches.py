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

    With `whole` (conversations' (starts, ends), from `conversations`), a window whose tile would begin inside a
    conversation begins at the conversation's start instead: every conversation (shorter than a window, as
    requests.spare makes them) is seen whole, its request in view of all its story, once a pass. Tiles cut most
    conversations in two, and the part after the cut was learned without its request (docs/experiments.md,
    2026-12-05 13:08). Plain stories keep their tiles. Pre-training only: a fine-tune's data is all conversations,
    so every window would begin at one (nanoslm.train.loop).

    A step's windows depend only on the step number, so a resumed run draws what an uninterrupted one would
    and every rank draws the same (nothing to save, nothing to broadcast).
    """

    def __init__(self, seed: int, tokens: int, block_size: int,
                 whole: tuple[np.ndarray, np.ndarray] | None = None):
        self.seed, self.block_size = seed, block_size
        self.slots = max(1, (tokens - block_size) // block_size)  # windows per pass; each needs block_size + 1
        self.max_shift = min(block_size - 1, tokens - 1 - self.slots * block_size)
        self.whole = whole
        self._pass, self._starts = -1, np.empty(0, np.int64)

    def _tiling(self, pass_: int) -> np.ndarray:
        """The window starts of a pass, in the order the pass shows them."""
        if pass_ != self._pass:  # a pass lasts many steps: draw its tiling once
            rng = np.random.default_rng([self.seed, pass_])
            shift, order = int(rng.integers(0, self.max_shift + 1)), rng.permutation(self.slots)
            starts = shift + np.arange(self.slots, dtype=np.int64) * self.block_size
            if self.whole is not None and len(self.whole[0]):
                begins, ends = self.whole
                inside = np.maximum(np.searchsorted(begins, starts, side="right") - 1, 0)
                cut = (begins[inside] < starts) & (starts < ends[inside])
                starts[cut] = begins[inside[cut]]
            self._pass, self._starts = pass_, starts[order]
        return self._starts

    def step(self, step: int, micro_batches: int, batch_size: int) -> np.ndarray:
        """Window starts of optimizer step `step`, (micro_batches, batch_size)."""
        count = micro_batches * batch_size
        out = np.empty(count, np.int64)
        for i, n in enumerate(range(step * count, (step + 1) * count)):
            out[i] = self._tiling(n // self.slots)[n % self.slots]
        return out.reshape(micro_batches, batch_size)


def conversations(data: np.ndarray, eot: int, roles) -> tuple[np.ndarray, np.ndarray]:
    """Where the conversations of a token split are: (starts, ends), a conversation spanning data[start:end] from
    the end-of-text before it to the one after it (exclusive); a conversation is a piece between end-of-texts that
    begins with a role id (`roles`)."""
    scan = 1 << 24  # tokens read at a time: memory stays flat on the hub's split
    bounds = np.concatenate([np.zeros(0, np.int64), *(np.flatnonzero(data[i : i + scan] == eot) + i
                                                      for i in range(0, len(data), scan))])
    bounds = bounds[bounds < len(data) - 1]
    ends = np.append(bounds[1:], len(data))
    chat = np.isin(data[bounds + 1], list(roles))
    return bounds[chat], ends[chat]


def train_windows(kind: str, seed: int, data: np.ndarray, block_size: int, eot: int | None = None, roles=()):
    """train.windows' sampler over the train split `data`: "passes" or "random"; its step(step, micro_batches,
    batch_size) gives the window starts of an optimizer step. With `roles` (a chat split's role ids), "passes"
    keeps each conversation whole in a window (see Passes)."""
    if kind == "passes":
        return Passes(seed, len(data), block_size, conversations(data, eot, roles) if roles else None)
    return RandomWindows(seed, len(data), block_size)
