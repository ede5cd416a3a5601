"""The dtype a served model generates in on a CPU: measured when it loads, not assumed.

hardware.dtype auto means bfloat16 on a CPU with bf16 instructions, which is right for training, but generating
one token at a time with a small model is another matter: on the 2-core AMD EPYC (avx512_bf16) of issue #23 the
engine made 510-610 tokens/s in bfloat16 and 780-925 in float32, while docs/benchmarks.md has bfloat16 ahead on
a Zen 4 (2026-12-05 07:14); the model's width, its vocabulary and the CPU decide. So when the server is given
bfloat16 on a CPU it times a few decode steps in both and keeps the faster. The decision is made once per model
and kept for the server's life, so a model reloaded after leaving the cache answers a seed as it did before.
Only the server measures: `nanoslm generate` and the sample stage keep the configured dtype, so their output
does not depend on a timing.
"""

import copy
import logging
import time
from typing import Any, Callable, Mapping, Optional

import torch

from ..config import Sampling
from ..engine import Engine, generators
from ..hardware import Hardware
from ..model import GPT

log = logging.getLogger("nanoslm.serve")

STEPS = 16  # decode steps per trial: a few milliseconds each, enough to see a 1.5x difference
ROUNDS = 3  # trials per dtype, alternating; the best of each counts (the first also warms up)


def fastest(trials: Mapping[Any, Callable[[], None]], rounds: int = ROUNDS,
            clock: Optional[Callable[[], float]] = None) -> Any:
    """The key of the trial whose best round took least time (on `clock`, default time.perf_counter, looked up
    when called). Trials alternate round by round, so a machine that gets busier or quieter meanwhile weighs on
    each alike."""
    clock = clock or time.perf_counter
    best = {key: float("inf") for key in trials}
    for _ in range(rounds):
        for key, trial in trials.items():
            start = clock()
            trial()
            best[key] = min(best[key], clock() - start)
    return min(best, key=best.get)


def generation_dtype(model: GPT, hw: Hardware, clock: Optional[Callable[[], float]] = None) -> torch.dtype:
    """hw.dtype, or on a CPU given bfloat16 whichever of bfloat16 and float32 decodes `model` faster."""
    if hw.device.type != "cpu" or hw.dtype != torch.bfloat16:
        return hw.dtype  # float32 was asked for (or bf16 is not native); GPUs keep their configured dtype
    trials = {dtype: _trial(Engine(copy.deepcopy(model), Hardware(hw.device, dtype), eot=-1))
              for dtype in (torch.bfloat16, torch.float32)}  # copies: the bfloat16 engine casts its model in place
    chosen = fastest(trials, clock=clock)
    log.info("generating in %s, the faster here of bfloat16 and float32", str(chosen).removeprefix("torch."))
    return chosen


def _trial(engine: Engine) -> Callable[[], None]:
    sampling = Sampling(max_new_tokens=STEPS, temperature=0.0)

    def run() -> None:
        for _ in engine.stream([[0]], sampling, generators(0, 1)):  # eot=-1: it never stops early
            pass

    return run
