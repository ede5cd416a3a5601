"""Checkpoints: tensors plus plain metadata, written atomically, read with torch.load(weights_only=True).

weights_only=True refuses pickled code, so a checkpoint from elsewhere cannot run anything on load.
"""

import dataclasses
import pickle
import zipfile
from pathlib import Path

import torch

from .atomic import atomic_path
from .config import GPTConfig
from .errors import UserError, brief
from .model import GPT

FORMAT_VERSION = 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT under torch.compile / DDP wrappers, so saved keys never carry their prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def save(path, model: torch.nn.Module, **meta) -> None:
    """Save the model's weights and config with `meta` (plain values and tensors only)."""
    model = unwrap(model)
    state = {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.config),
        "model": model.state_dict(),
        **meta,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a file object, so a full disk surfaces as OSError(ENOSPC)


class DamagedCheckpoint(UserError):
    """The file is truncated, corrupt or not a checkpoint at all: nothing in it can be used."""


def load(path, map_location="cpu") -> dict:
    """Read and check a checkpoint; every way it can be unusable is a one-line UserError.

    A truncated, corrupt or foreign file is a DamagedCheckpoint; a real checkpoint holding pickled Python
    objects (which torch.load(weights_only=True) refuses, as loading them could run code) is a plain UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train one first: dvc repro train")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has lost its directory
        raise _damaged(path, "it is not a complete zip archive")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = _unsafe_globals(path)
        if not foreign:
            raise _damaged(path, err) from None
        raise UserError(f"{path}: refused to load it, because it holds Python objects ({', '.join(foreign[:3])}) "
                        f"besides tensors and plain values, and loading those could run code. Use a checkpoint "
                        f"written by Nano-SLM, or train a new one: dvc repro --force train") from None
    # a damaged archive fails inside torch or the unpickler with EOFError, KeyError, IndexError, ...
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as err:
        raise _damaged(path, err) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise _damaged(path, "it holds no format version", what="not a Nano-SLM checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {state['format_version']} is not the supported format "
                        f"{FORMAT_VERSION}; retrain with this version: dvc repro --force train")
    return state


def _damaged(path: Path, cause, what: str = "not a readable checkpoint (truncated or corrupt)") -> DamagedCheckpoint:
    return DamagedCheckpoint(f"{path}: {what}; train a new one: dvc repro --force train (cause: {_cause(cause)})")


def _unsafe_globals(path: Path) -> list[str]:
    """The Python classes and functions a checkpoint's pickle names outside torch's weights-only allowlist."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a pickle too damaged to scan holds nothing we can name
        return []


def require_config(path, expected: GPTConfig) -> None:
    """Refuse a checkpoint whose model config differs from params.yaml's `model` section."""
    try:  # mmap: reads the small config, not the weights
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model_config"]
    except Exception:  # noqa: BLE001 - load() below names the problem in one line
        load(path)
        raise UserError(f"{path}: not a Nano-SLM checkpoint") from None
    diffs = [f"model.{k}={saved.get(k)} but params.yaml has {v}"
             for k, v in dataclasses.asdict(expected).items() if saved.get(k) != v]
    if diffs:
        raise UserError(f"{path}: trained with {'; '.join(diffs[:3])}; retrain: dvc repro train")


def load_model(path, device="cpu") -> tuple[GPT, dict]:
    """A GPT in eval mode with the checkpoint's weights, and the checkpoint's metadata."""
    state = load(path, map_location=device)
    try:
        cfg = GPTConfig(**state["model_config"])
        model = GPT(cfg)
        model.load_state_dict(state.pop("model"))
    except (TypeError, KeyError, RuntimeError) as err:
        raise UserError(f"{path}: weights do not match the stored model config ({brief(err)})") from None
    return model.to(device).eval(), state


def _cause(cause) -> str:
    """The technical cause closing a message: its type and errors.brief's one line (whole with NANOSLM_DEBUG=1)."""
    return cause if isinstance(cause, str) else f"{type(cause).__name__}: {brief(cause)}"
