"""A DVC repository's experiments as ModelEntries, and their checkpoints read from its cache; knows no engines.

Experiments are what `dvc exp show --json` lists (the workspace, the baseline commits and their experiments).
Each one's models/best.pt is read through DVC's API from the local cache (no remote is contacted); a revision
whose checkpoint is not there is listed as unavailable, with the reason.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..errors import UserError, brief

MODEL_PATH = "models/best.pt"  # the train stage's best checkpoint, in every revision
EVAL_METRICS = "metrics/eval.json"


@dataclass
class ModelEntry:
    id: str  # what a request's `model` names
    kind: str  # checkpoint | workspace | baseline | experiment
    source: str  # for people: the file, or the file at a revision
    rev: Optional[str] = None  # git revision for DVC; None = a plain file (checkpoint) or the workspace
    path: Optional[Path] = None  # the checkpoint file (kind checkpoint)
    out_hash: Optional[str] = None  # DVC's hash of models/best.pt at this revision
    available: bool = True
    reason: Optional[str] = None  # why not available
    params: dict = field(default_factory=dict)  # params that differ from the baseline commit
    metrics: dict = field(default_factory=dict)
    baseline: Optional[str] = None
    aliases: tuple = ()  # other names a request may use

    def public(self) -> dict:
        return {"id": self.id, "aliases": list(self.aliases), "kind": self.kind, "source": self.source, "rev": self.rev,
                "available": self.available, "reason": self.reason, "params": self.params,
                "metrics": self.metrics, "baseline": self.baseline}


@contextlib.contextmanager
def checkpoint_file(repo: Path, rev: Optional[str]) -> Iterator[str]:
    """A local path to models/best.pt at `rev`, read from DVC's local cache; UserError when it cannot be read."""
    import dvc.api

    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(dvc.api.open(MODEL_PATH, repo=str(repo), rev=rev, mode="rb"))
        except Exception as err:  # noqa: BLE001 - e.g. the cache was garbage-collected since it was listed
            raise UserError(f"{MODEL_PATH} at {rev}: {brief(err)}") from None
        name = getattr(f, "name", None)
        if isinstance(name, str) and os.path.isfile(name):  # the local cache's own file: no copy
            yield name
            return
        with tempfile.TemporaryDirectory(prefix="nanoslm-serve-") as tmp:  # a stream: copy it to load it
            path = Path(tmp) / "best.pt"
            with open(path, "wb") as out:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
            yield str(path)


# --- the experiments list -----------------------------------------------------------------------------------
def list_experiments(repo: Optional[Path]) -> tuple[list[ModelEntry], Optional[str]]:
    """(entries, a note when there are none to list)."""
    if repo is None:
        return [], None
    if not (repo / ".dvc").is_dir():
        return [], f"{repo} is not a DVC repository: no experiments to compare"
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    try:
        result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"dvc exp show failed: {brief(err)}"
    if result.returncode != 0:  # its last line of stderr says why
        return [], f"dvc exp show failed: {brief((result.stderr.strip().splitlines() or [''])[-1])}"
    try:
        entries = parse_exp_show(json.loads(result.stdout))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return [], f"could not read dvc exp show's output: {brief(err)}"
    for entry in entries:
        if entry.kind == "workspace":  # the file itself (it may differ from what dvc.lock records)
            entry.path, entry.out_hash = repo / MODEL_PATH, None
            entry.available = entry.path.is_file()
            entry.reason = None if entry.available else f"{entry.path}: not found; train one: dvc repro train"
        elif entry.available:
            check_available(repo, entry)
    return entries, None if entries else "dvc exp show lists nothing yet"


def check_available(repo: Path, entry: ModelEntry) -> None:
    """Mark the entry unavailable, with DVC's reason, when its models/best.pt cannot be opened locally."""
    import dvc.api

    try:
        with dvc.api.open(MODEL_PATH, repo=str(repo), rev=entry.rev, mode="rb") as f:
            f.read(1)
    except Exception as err:  # noqa: BLE001 - DVC raises many kinds; each is a reason to show
        entry.available = False
        entry.reason = (f"{MODEL_PATH} (md5 {str(entry.out_hash)[:8]}…) cannot be read from the local DVC cache "
                        f"(`dvc exp pull` or `dvc pull` may fetch it); DVC says: {brief(err)}")


def parse_exp_show(rows: list) -> list[ModelEntry]:
    """ModelEntries from `dvc exp show --json`: the workspace, each baseline commit, each experiment."""
    entries, commits = [], [r for r in rows if r.get("rev") != "workspace"]
    head_params = _params(commits[0]) if commits else {}
    taken: set = set()

    def name(preferred: Optional[str], rev: str) -> str:
        out = preferred or rev[:7]
        if out in taken:
            out = f"{out}@{rev[:7]}"
        taken.add(out)
        return out

    for row in rows:
        if row.get("rev") == "workspace":
            entries.append(_entry(row, "workspace", "workspace", None, head_params, commits[0] if commits else None))
            taken.add("workspace")
            continue
        base_id = name(row.get("name"), row["rev"])
        entries.append(_entry(row, base_id, "baseline", row["rev"], _params(row), None))
        for exp in row.get("experiments") or []:
            revs = exp.get("revs") or []
            if not revs:
                continue
            tip = revs[0]
            entry = _entry(tip, name(exp.get("name") or tip.get("name"), tip["rev"]), "experiment", tip["rev"],
                           _params(row), row, base_id)
            state = (exp.get("executor") or {}).get("state") if isinstance(exp.get("executor"), dict) else None
            if state in ("queued", "running", "failed") and entry.available:
                entry.available, entry.reason = False, f"the experiment is {state}, it has no finished checkpoint"
            entries.append(entry)
    return entries


def _entry(row: dict, id_: str, kind: str, rev: Optional[str], base_params: dict, base_row: Optional[dict],
           base_id: Optional[str] = None) -> ModelEntry:
    data = row.get("data") or {}
    params = _params(row)
    changed = {k: v for k, v in params.items() if base_params.get(k, _MISSING) != v}
    changed.update({k: None for k in base_params if k not in params})
    out = ((data.get("outs") or {}).get(MODEL_PATH) or {})
    where = "workspace" if rev is None else f"{id_} ({rev[:7]})"
    entry = ModelEntry(id=id_, kind=kind, source=f"{MODEL_PATH} @ {where}", rev=rev, out_hash=out.get("hash"),
                       params=changed if kind != "baseline" else {}, metrics=_metrics(row),
                       baseline=base_id if kind == "experiment" else (
                           (base_row.get("name") or base_row["rev"][:7]) if base_row else None))
    if row.get("error"):
        err = row["error"]
        said = str(err.get("msg", err) if isinstance(err, dict) else err)
        entry.available, entry.reason = False, f"dvc exp show reports an error: {brief(said)}"
    elif not out.get("hash"):
        entry.available = False
        entry.reason = f"no {MODEL_PATH} recorded at this revision (its dvc.lock lacks it: run the pipeline there)"
    return entry


_MISSING = object()


def _params(row: dict) -> dict:
    flat = {}
    for file, content in ((row.get("data") or {}).get("params") or {}).items():
        prefix = "" if file == "params.yaml" else f"{file}:"
        _flatten((content or {}).get("data") or {}, prefix, flat)
    return flat


def _metrics(row: dict) -> dict:
    """Every metric of the revision, flat; a name found in several files keeps its file as a prefix."""
    per_file = {}
    for file, content in ((row.get("data") or {}).get("metrics") or {}).items():
        per_file[file] = _flatten((content or {}).get("data") or {}, "", {})
    counts: dict = {}
    for values in per_file.values():
        for k in values:
            counts[k] = counts.get(k, 0) + 1
    flat = {}
    for file, values in per_file.items():
        for k, v in values.items():
            flat[k if counts[k] == 1 else f"{file}:{k}"] = v
    return flat


def _flatten(tree: dict, prefix: str, out: dict) -> dict:
    for k, v in tree.items():
        if isinstance(v, dict):
            _flatten(v, f"{prefix}{k}.", out)
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return _flatten(data, "", {}) if isinstance(data, dict) else {}
