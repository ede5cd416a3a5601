"""Fault injection for tests: make a process kill or interrupt itself at a named point.

NANOSLM_FAULT="kill@step:17" sends SIGKILL before training step 18 starts; "interrupt@step:12" sends
SIGINT; "kill@publish:train.bin" sends SIGKILL once train.bin's temporary file is complete but not yet
renamed into place. Unset (always, outside tests), this costs one environment lookup.
"""

import os
import signal

ENV = "NANOSLM_FAULT"
SIGNALS = {"kill": signal.SIGKILL, "interrupt": signal.SIGINT}


def trip(point: str) -> None:
    """Signal this process if NANOSLM_FAULT names `point`."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, _, target = spec.partition("@")
    if target == point and action in SIGNALS:
        os.kill(os.getpid(), SIGNALS[action])
