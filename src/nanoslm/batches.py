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


def train_windows(kind: str, seed: int, tokens: int, block_size: int) -> Passes | RandomWindows:
    """train.windows' sampler over a train split of `tokens` tokens: "passes" or "random"."""
    return {"passes": Passes, "random": RandomWindows}[kind](seed, tokens, block_size)
