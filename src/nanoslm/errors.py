"""The one exception type for mistakes a user can fix (bad params, missing files, ...).

Stages and the CLI catch it, print its one-line message and exit non-zero; any other
exception is a bug and keeps its traceback.
"""

import os
import sys
from contextlib import contextmanager
from typing import Union


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


def brief(err: Union[BaseException, str], limit: int = 160) -> str:
    """An exception's message (or a tool's, e.g. a line of its stderr) as a short technical cause to put after our
    own words: one line, cut at a word boundary (marked with "..."); whole when NANOSLM_DEBUG is set. Its type's
    name when it has no message."""
    text = " ".join(str(err).split()) or (type(err).__name__ if isinstance(err, BaseException) else "no message")
    if len(text) <= limit or os.environ.get("NANOSLM_DEBUG"):
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + " ..."


@contextmanager
def exit_on_user_error():
    """Turn a UserError into `error: <message>` on stderr and exit status 2.

    Set NANOSLM_DEBUG=1 to see the traceback instead.
    """
    try:
        yield
    except UserError as err:
        if os.environ.get("NANOSLM_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
