"""Windows of a token array as model inputs and next-token targets: what train and evaluate feed the model."""

import numpy as np
import torch


def windows(data: np.ndarray, offsets: np.ndarray, block_size: int, device: torch.device):
    """Inputs and next-token targets for windows of block_size tokens starting at `offsets`."""
    rows = torch.from_numpy(data[offsets[:, None] + np.arange(block_size + 1)].astype(np.int64))
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    else:
        rows = rows.to(device)
    return rows[:, :-1], rows[:, 1:]


def random_offsets(rng: np.random.Generator, data: np.ndarray, count: int, block_size: int) -> np.ndarray:
    return rng.integers(0, len(data) - block_size, size=count)


def step_offsets(rng: np.random.Generator, data: np.ndarray, micro_batches: int, batch_size: int,
                 block_size: int) -> np.ndarray:
    """One optimizer step's window starts, (micro_batches, batch_size): the train stage's draw, which bench repeats."""
    return random_offsets(rng, data, micro_batches * batch_size, block_size).reshape(micro_batches, batch_size)
