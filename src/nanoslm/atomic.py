"""Atomic file writes: a later stage sees the old file or the whole new one, never half of one."""

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import faults
from .errors import UserError


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    On any exception the temporary file is removed and `path` keeps its previous content; a full disk
    becomes a one-line UserError. Temporary files left by an earlier writer that was killed are swept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        faults.trip(f"publish:{path.name}")
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{path}: disk full while writing it; the previous version is kept; "
                            f"free some space and rerun") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
