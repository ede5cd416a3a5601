"""The train windows: without replacement pass by pass (or with replacement), a function of the step alone."""

import numpy as np
import pytest
import torch

from nanoslm.batches import Passes, random_offsets, train_windows

BLOCK = 16
EOT, USER = 99, 100


def stream(lengths) -> np.ndarray:
    """A train split as tokenize writes it: end-of-text, then each story (ids 1-50) and end-of-text."""
    rng = np.random.default_rng(0)
    pieces = [[EOT]] + [[*rng.integers(1, 50, n).tolist(), EOT] for n in lengths]
    return np.array([t for p in pieces for t in p], np.uint16)


DATA = stream(np.random.default_rng(1).integers(2, 40, 60))  # stories of 2 to 39 tokens, some past a window


def starts(passes: Passes, steps: range, micro: int = 2, batch: int = 3) -> np.ndarray:
    return np.concatenate([passes.step(s, micro, batch).ravel() for s in steps])


@pytest.mark.parametrize("kind", ["passes", "random"])
@pytest.mark.parametrize("tokens", [BLOCK + 1, 2 * BLOCK, 1000, 1000 + BLOCK - 1])
def test_every_window_fits(kind, tokens):
    got = starts(train_windows(kind, 7, np.zeros(tokens, np.uint16), BLOCK, EOT), range(40))
    assert got.min() >= 0 and got.max() + BLOCK + 1 <= tokens


def test_one_pass_shows_each_window_once():
    passes = Passes(7, 1000, BLOCK)
    per_step = 6
    assert passes.slots % per_step, "the test wants a pass that ends inside a step"
    got = starts(passes, range(3 * passes.slots // per_step + 1))
    first, second = got[:passes.slots], got[passes.slots:2 * passes.slots]
    for one in (first, second):
        assert len(set(one.tolist())) == passes.slots  # no window twice within a pass
        assert len(set((one % BLOCK).tolist())) == 1  # one tiling per pass, from one shift
        assert np.all(np.diff(np.sort(one)) == BLOCK)  # ... and it has no gaps
    assert not np.array_equal(first, second)  # each pass has an order (and a shift) of its own


def test_passes_keep_each_conversation_whole_once_a_pass():
    """A tile that would begin inside a conversation begins at its start, so each conversation lies whole in a
    window every pass; tiles that begin in plain stories stay where they were, and a chat-free split tiles as
    before."""
    data = DATA.copy()
    bounds = np.flatnonzero(data == EOT)[:-1]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b - a <= BLOCK][::2]  # every other short story ...
    data[[a + 1 for a, _ in spans]] = USER  # ... begins with a role id: a conversation
    sampler = train_windows("passes", 7, data, BLOCK, EOT, roles=[USER])
    plain = train_windows("passes", 7, DATA, BLOCK, EOT, roles=[USER])
    per_step = 6
    got = starts(sampler, range(2 * sampler.slots // per_step + 1))
    tiles = starts(plain, range(2 * sampler.slots // per_step + 1))
    moved = 0
    for one, tiled in ((got[: sampler.slots], tiles[: sampler.slots]),
                       (got[sampler.slots : 2 * sampler.slots], tiles[sampler.slots : 2 * sampler.slots])):
        for a, b in spans:
            assert any(o <= a and b <= o + BLOCK for o in one), (a, b)
        for o, t in zip(one, tiled):
            assert o == t or (o, next(b for a, b in spans if a == o)) in spans and o < t < o + BLOCK
            moved += o != t
    assert moved > 0
    np.testing.assert_array_equal(tiles, starts(train_windows("passes", 7, DATA, BLOCK), range(len(tiles) // 6)))


@pytest.mark.parametrize("kind", ["passes", "random"])
def test_steps_depend_on_the_step_alone(kind):
    """A resumed run builds a fresh sampler and asks for step k: it must get what an unbroken run got."""
    whole = train_windows(kind, 7, DATA, BLOCK, EOT)
    unbroken = [whole.step(s, 2, 3) for s in range(200)]
    fresh = train_windows(kind, 7, DATA, BLOCK, EOT)
    for s in (150, 3, 199, 80):
        np.testing.assert_array_equal(fresh.step(s, 2, 3), unbroken[s])
    assert fresh.step(0, 2, 3).shape == (2, 3)


@pytest.mark.parametrize("kind", ["passes", "random"])
def test_seed_changes_the_windows(kind):
    a, b = (starts(train_windows(kind, seed, DATA, BLOCK, EOT), range(5)) for seed in (1, 2))
    assert not np.array_equal(a, b)


def test_random_windows_are_the_earlier_sampler():
    """`random` is the stream every run drew before train.windows existed, even when resumed mid-way."""
    data = np.zeros(1000, np.uint16)
    stream = np.random.default_rng(7)
    earlier = [random_offsets(stream, data, 6, BLOCK).reshape(2, 3) for _ in range(50)]
    unbroken = train_windows("random", 7, data, BLOCK, EOT)
    assert all(np.array_equal(unbroken.step(s, 2, 3), earlier[s]) for s in range(50))
    resumed = train_windows("random", 7, data, BLOCK, EOT)
    resumed.REPLAY_CHUNK = 5  # replay in pieces that split steps
    assert all(np.array_equal(resumed.step(s, 2, 3), earlier[s]) for s in range(31, 50))


def test_random_windows_are_no_tiling():
    """The with-replacement draw: starts anywhere, so windows overlap instead of tiling the data."""
    got = train_windows("random", 7, DATA, BLOCK, EOT).step(0, 1, 60).ravel()
    assert len(set((got % BLOCK).tolist())) > 1


def test_batches_use_pinned_async_copies_on_cuda_only():
    """Pinned memory needs a GPU driver: on a CPU it would fail (or waste time); on CUDA it overlaps the copy."""
    from nanoslm.batches import pinned_transfer

    assert pinned_transfer(torch.device("cuda")) and pinned_transfer(torch.device("cuda", 1))
    assert not pinned_transfer(torch.device("cpu")) and not pinned_transfer(torch.device("mps"))


def test_cpu_batches_never_pin_memory(monkeypatch):
    from nanoslm.batches import windows

    def pin_memory(self, *args, **kwargs):
        raise AssertionError("pin_memory called for a CPU batch")

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    x, y = windows(np.arange(100, dtype=np.uint16), np.array([0, 5]), 8, torch.device("cpu"))
    assert x.tolist()[1] == list(range(5, 13)) and y.tolist()[1] == list(range(6, 14))
