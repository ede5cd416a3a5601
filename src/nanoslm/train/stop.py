"""Ctrl-C and SIGTERM during training: a flag the loop checks at each step boundary, where it saves and stops."""

import signal
import sys


class StopRequest:
    """Ctrl-C / SIGTERM set `requested`; the loop saves a checkpoint at the next step boundary and stops. A second
    Ctrl-C stops at once. restore() puts the previous handlers back."""

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again to quit at once)",
              file=sys.stderr)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
