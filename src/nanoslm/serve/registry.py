"""The models a server offers and the engines it keeps loaded (cache and locks); knows nothing of DVC or HTTP.

What there is: the --checkpoint file and --repo's DVC experiments (listed by experiments.py), found by the id a
request names. Engines are loaded on first use, off the event loop (on the server's generation thread: see
generation.py), one load per model however many requests ask at once, and the few most recently used stay in
memory."""

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from .. import checkpoint, hardware
from ..conversation import ChatTokens
from ..errors import UserError
from ..generate import engine_for
from ..tokenizer import encoding_for
from .dtypes import generation_dtype
from .experiments import EVAL_METRICS, MODEL_PATH, ModelEntry, checkpoint_file, list_experiments, read_metrics
from .limits import ApiError

log = logging.getLogger("nanoslm.serve")


@dataclass
class Loaded:
    engine: Any
    enc: Any
    info: dict
    chat: Optional[ChatTokens] = None  # the chat ids of an instruction-tuned model; None for a story model

    @property
    def ends(self) -> frozenset:
        """Ids that end a reply besides the engine's own stops: the role markers, which begin another turn."""
        return frozenset() if self.chat is None else self.chat.roles


class Registry:
    """The models, their loaded engines (LRU, `max_engines` kept) and the experiments list (read on demand)."""

    def __init__(self, checkpoint: os.PathLike, repo: Optional[os.PathLike], hw: hardware.Hardware,
                 max_engines: int = 3, measure_dtype: bool = True):
        self.checkpoint = Path(checkpoint)
        self.repo = Path(repo).resolve() if repo is not None else None
        self.hw, self.max_engines = hw, max(1, max_engines)
        self.measure_dtype = measure_dtype  # bfloat16 on a CPU: generate in the faster of it and float32 (dtypes.py)
        self._dtypes: dict[tuple, Any] = {}  # each model's measured dtype, kept when its engine leaves the cache
        self._chat: dict[tuple, bool] = {}  # whether each model seen so far is a chat model
        self._engines: "OrderedDict[tuple, Loaded]" = OrderedDict()
        self._loading: dict[tuple, asyncio.Lock] = {}
        self._experiments: Optional[list[ModelEntry]] = None
        self.experiments_note: Optional[str] = None
        self._list_lock = threading.Lock()

    # --- what there is -------------------------------------------------------------------------------------
    def checkpoint_entry(self) -> ModelEntry:
        path = self.checkpoint
        entry = ModelEntry(id=path.as_posix(), kind="checkpoint", source=path.as_posix(), path=path)
        if not path.is_file():
            entry.available, entry.reason = False, f"{path}: not found; train one first: dvc repro train"
        elif self._is_workspace_model(path):
            entry.metrics = read_metrics(self.repo / EVAL_METRICS)
        return entry

    def _is_workspace_model(self, path: Path) -> bool:
        return self.repo is not None and path.resolve() == (self.repo / MODEL_PATH).resolve()

    async def entries(self, refresh: bool = False) -> list[ModelEntry]:
        if self._experiments is None or refresh:
            await asyncio.to_thread(self._list_experiments)
        first, rest = self.checkpoint_entry(), list(self._experiments or [])
        workspace = next((e for e in rest if e.kind == "workspace"), None)
        if workspace is not None and self._is_workspace_model(self.checkpoint):  # one model: listed once
            rest.remove(workspace)
            first.kind, first.aliases, first.baseline = "workspace", ("workspace",), workspace.baseline
            first.params, first.metrics = workspace.params, workspace.metrics or first.metrics
        return [first, *rest]

    def _list_experiments(self) -> None:
        with self._list_lock:
            self._experiments, self.experiments_note = list_experiments(self.repo)

    async def find(self, model_id: Optional[str]) -> ModelEntry:
        """The entry a request names (None: the checkpoint); ApiError 404 when unknown or unavailable."""
        entries = [self.checkpoint_entry()]
        if model_id is not None and model_id != entries[0].id:
            entries = await self.entries()
        wanted = entries[0] if model_id is None else next(
            (e for e in entries if model_id == e.id or model_id in e.aliases), None)
        if wanted is None:
            known = ", ".join(repr(e.id) for e in entries if e.available) or "none"
            raise ApiError(404, f"model {model_id!r} is not served here; available: {known} (GET /v1/models)",
                           param="model", code="model_not_found")
        if not wanted.available:
            raise ApiError(404, f"model {wanted.id!r} is unavailable: {wanted.reason}", param="model",
                           code="model_not_available")
        return wanted

    # --- engines -------------------------------------------------------------------------------------------
    async def load(self, entry: ModelEntry, run: Callable[..., Awaitable] = asyncio.to_thread) -> Loaded:
        """The entry's engine, loaded by `run(fn, *args)` unless in the cache; the server passes Scheduler.run."""
        key = self._key(entry)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:  # one load per model, however many requests ask at once
            if key not in self._engines:
                try:
                    loaded = await run(self._load, entry)
                except UserError as err:
                    raise ApiError(409, f"model {entry.id!r} cannot be loaded: {err}", param="model",
                                   code="model_not_loadable") from None
                self._engines[key] = loaded
                while len(self._engines) > self.max_engines:
                    self._engines.popitem(last=False)  # requests still using it keep their reference
            self._loading.pop(key, None)
        self._engines.move_to_end(key)
        return self._engines[key]

    def loaded(self) -> list[str]:
        """The models in memory, least recently used first."""
        return [loaded.info["id"] for loaded in self._engines.values()]

    def _key(self, entry: ModelEntry) -> tuple:
        if entry.path is not None:
            st = entry.path.stat()  # a retrained checkpoint is a new model
            return ("file", str(entry.path.resolve()), st.st_mtime_ns, st.st_size)
        return ("dvc", entry.out_hash) if entry.out_hash else ("rev", entry.rev)

    def is_chat(self, entry: ModelEntry) -> Optional[bool]:
        """Whether the entry is an instruction-tuned model; None while unknown (a DVC revision not loaded yet)."""
        if not entry.available:
            return None
        key = self._key(entry)
        if key not in self._chat and entry.path is not None:
            try:
                self._chat[key] = "chat" in checkpoint.load(entry.path)  # a metadata look; the engine loads on use
            except UserError:
                return None
        return self._chat.get(key)

    def _load(self, entry: ModelEntry) -> Loaded:
        with contextlib.ExitStack() as stack:
            path = entry.path if entry.path is not None else stack.enter_context(checkpoint_file(self.repo, entry.rev))
            model, state = checkpoint.load_model(path, self.hw.device)
            enc = encoding_for(state["tokenizer"], source=path)
        key = self._key(entry)
        if key not in self._dtypes:
            self._dtypes[key] = generation_dtype(model, self.hw) if self.measure_dtype else self.hw.dtype
        engine = engine_for(model, state, enc, hardware.Hardware(self.hw.device, self._dtypes[key]))
        chat = ChatTokens(**state["chat"]) if "chat" in state else None
        self._chat[key] = chat is not None
        log.info("loaded %s (%s)", entry.id, entry.source)
        return Loaded(engine, enc, describe(entry, state, engine), chat)


def describe(entry: ModelEntry, state: dict, engine) -> dict:
    """What the page shows about the model that speaks."""
    cfg = engine.model.config
    bpb, bpb_from = state.get("bits_per_byte"), "checkpoint"
    if bpb is None:
        bpb, bpb_from = entry.metrics.get("bits_per_byte"), EVAL_METRICS
    if not isinstance(bpb, (int, float)):
        bpb, bpb_from = None, None
    val_loss = state.get("val_loss")
    return {"id": entry.id, "source": entry.source, "step": state.get("step"), "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size, "vocab_size": cfg.vocab_size,
            "tokenizer": state.get("tokenizer"), "val_loss": float(val_loss) if val_loss is not None else None,
            "bits_per_byte": bpb, "bits_per_byte_from": bpb_from, "params": entry.params, "metrics": entry.metrics,
            "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."), "chat": "chat" in state}
