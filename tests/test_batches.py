"""The train windows: drawn without replacement, pass by pass, and a function of the step alone."""

import numpy as np
import pytest

from nanoslm.batches import Passes

BLOCK = 16


def starts(passes: Passes, steps: range, micro: int = 2, batch: int = 3) -> np.ndarray:
    return np.concatenate([passes.step(s, micro, batch).ravel() for s in steps])


@pytest.mark.parametrize("tokens", [BLOCK + 1, 2 * BLOCK, 1000, 1000 + BLOCK - 1])
def test_every_window_fits(tokens):
    passes = Passes(7, tokens, BLOCK)
    got = starts(passes, range(40))
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


def test_steps_depend_on_the_step_alone():
    """A resumed run builds a fresh Passes and asks for step k: it must get what an unbroken run got."""
    whole = Passes(7, 1000, BLOCK)
    unbroken = [whole.step(s, 2, 3) for s in range(200)]
    fresh = Passes(7, 1000, BLOCK)
    for s in (150, 3, 199, 80):
        np.testing.assert_array_equal(fresh.step(s, 2, 3), unbroken[s])
    assert fresh.step(0, 2, 3).shape == (2, 3)


def test_seed_changes_the_windows():
    assert not np.array_equal(starts(Passes(1, 1000, BLOCK), range(5)), starts(Passes(2, 1000, BLOCK), range(5)))
