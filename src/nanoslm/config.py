"""Load params.yaml once, check every key and type, and hand out typed, frozen sections.

Every user mistake becomes a one-line UserError naming the key and the fix.
"""

import difflib
import typing
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .errors import UserError

GPT2_VOCAB = 50257  # tokens in tiktoken's "gpt2" encoding; the model's vocab may be padded above it


@dataclass(frozen=True)
class DataConfig:
    source: str  # Hugging Face dataset id, or a local file / directory
    max_train_stories: typing.Optional[int]  # null = all
    max_val_stories: typing.Optional[int]
    holdout_every: int  # single-file sources: every Nth story goes to validation


@dataclass(frozen=True)
class TokenizerConfig:
    name: str
    batch_stories: int  # stories encoded per batch; bounds tokenize's memory


@dataclass(frozen=True)
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    grad_accum_steps: int
    lr: float
    min_lr: float
    warmup_iters: int
    lr_decay_iters: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float  # 0 disables clipping
    max_iters: int
    eval_interval: int
    eval_iters: int
    log_interval: int
    checkpoint_interval: int  # steps between resumable checkpoints (models/last.pt)
    seed: int
    optimizer: str  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    muon_lr: float  # Muon's peak learning rate (optimizer: muon); lr stays AdamW's
    schedule: str  # cosine | wsd (warmup, stable at the peak, linear decay over the last decay_frac)
    decay_frac: float  # wsd: fraction of lr_decay_iters spent decaying to min_lr


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int


@dataclass(frozen=True)
class SampleConfig:
    prompts: typing.List[str]
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_k: typing.Optional[int]  # null = no top-k filtering
    top_p: float  # nucleus sampling: keep the fewest most likely tokens holding this much probability; 1.0 = off
    seed: int


@dataclass(frozen=True)
class HardwareConfig:
    device: str  # auto | cpu | cuda | mps
    dtype: str  # auto | float32 | bfloat16 | float16
    compile: bool
    threads: int  # 0 = every core
    nproc_per_node: int  # training processes on this machine; > 1 runs the train stage under torchrun (DDP)


@dataclass(frozen=True)
class Params:
    data: DataConfig
    tokenizer: TokenizerConfig
    model: GPTConfig
    train: TrainConfig
    eval: EvalConfig
    sample: SampleConfig
    hardware: HardwareConfig

    def updated(self, section: str, **values) -> "Params":
        """A copy with some values of one section changed, e.g. params.updated("train", max_iters=10)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZERS = ("gpt2",)
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def load_params(path="params.yaml") -> Params:
    """Read and validate a params file; raise UserError with a one-line message on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; run from the repository root or copy params-ci.yaml to {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: YAML syntax error{where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: YAML error: {err}") from None
    params = _build(Params, raw, prefix="", source=path)
    _check(params, path)
    return params


def _build(cls, raw, prefix, source):
    """Build dataclass `cls` from a mapping, checking unknown/missing keys and each value's type."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {where}: expected a mapping of keys, got {_describe(raw)}")
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise UserError(f"{source}: unknown key '{prefix}{key}'{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in names:
        key = prefix + name
        if name not in raw:
            raise UserError(f"{source}: missing key '{key}'; see params.yaml in the repository for every key")
        kind = hints[name]
        if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
            values[name] = _build(kind, raw[name], key + ".", source)
        else:
            values[name] = _coerce(kind, raw[name], key, source)
    return cls(**values)


def _coerce(kind, value, key, source):
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        if value is None:
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise UserError(f"{source}: '{key}' must be a list, got {_describe(value)}")
        return [_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        hint = ""
        if kind is float and isinstance(value, str):
            hint = f" (YAML reads {value} as text; write it with a dot, e.g. 3.0e-4)"
        raise UserError(f"{source}: '{key}' must be {_type_name(kind)}, got {_describe(value)}{hint}")
    return value


def _type_name(kind):
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)


def _describe(value):
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _check(p: Params, source) -> None:
    """Checks that span more than one value's type."""

    def fail(key, msg):
        raise UserError(f"{source}: '{key}' {msg}")

    def positive(section, obj, *names):
        for name in names:
            if getattr(obj, name) <= 0:
                fail(f"{section}.{name}", f"must be positive, got {getattr(obj, name)}")

    def at_least_zero(section, obj, *names):
        for name in names:
            if getattr(obj, name) < 0:
                fail(f"{section}.{name}", f"must be zero or more, got {getattr(obj, name)}")

    d, t, m, tr, ev, s, hw = p.data, p.tokenizer, p.model, p.train, p.eval, p.sample, p.hardware
    if not d.source.strip():
        fail("data.source", "is empty; give a Hugging Face dataset id or a local path")
    for name in ("max_train_stories", "max_val_stories"):
        if getattr(d, name) is not None and getattr(d, name) <= 0:
            fail(f"data.{name}", f"must be positive or null (no cap), got {getattr(d, name)}")
    positive("data", d, "holdout_every")
    if t.name not in TOKENIZERS:
        fail("tokenizer.name", f"must be one of {', '.join(TOKENIZERS)}, got {t.name!r}")
    positive("tokenizer", t, "batch_stories")
    positive("model", m, "block_size", "vocab_size", "n_layer", "n_head", "n_embd")
    if m.n_embd % m.n_head:
        fail("model.n_embd", f"({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if m.vocab_size < GPT2_VOCAB:
        fail("model.vocab_size", f"must be at least {GPT2_VOCAB} (the GPT-2 tokenizer's size), got {m.vocab_size}")
    if not 0 <= m.dropout < 1:
        fail("model.dropout", f"must be in [0, 1), got {m.dropout}")
    positive("train", tr, "batch_size", "grad_accum_steps", "lr", "max_iters", "eval_interval", "eval_iters",
             "log_interval", "checkpoint_interval")
    at_least_zero("train", tr, "min_lr", "warmup_iters", "weight_decay", "grad_clip", "seed")
    if tr.min_lr > tr.lr:
        fail("train.min_lr", f"({tr.min_lr}) must not exceed train.lr ({tr.lr})")
    if tr.lr_decay_iters < tr.warmup_iters:
        fail("train.lr_decay_iters", f"({tr.lr_decay_iters}) must be at least train.warmup_iters ({tr.warmup_iters})")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(tr, name) < 1:
            fail(f"train.{name}", f"must be in [0, 1), got {getattr(tr, name)}")
    # -- training recipe levers (train.optimizer, train.schedule) --
    if tr.optimizer not in OPTIMIZERS:
        fail("train.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {tr.optimizer!r}")
    positive("train", tr, "muon_lr")
    if tr.schedule not in SCHEDULES:
        fail("train.schedule", f"must be one of {', '.join(SCHEDULES)}, got {tr.schedule!r}")
    if not 0 < tr.decay_frac <= 1:
        fail("train.decay_frac", f"must be in (0, 1], got {tr.decay_frac}")
    # -- end of the training recipe levers --
    positive("eval", ev, "batch_size")
    if not s.prompts:
        fail("sample.prompts", "is empty; list at least one prompt")
    positive("sample", s, "max_new_tokens")
    at_least_zero("sample", s, "temperature", "seed")
    if s.top_k is not None and not 1 <= s.top_k <= m.vocab_size:
        fail("sample.top_k", f"must be null or between 1 and model.vocab_size ({m.vocab_size}), got {s.top_k}")
    if not 0 < s.top_p <= 1:
        fail("sample.top_p", f"must be in (0, 1] (1.0 = off), got {s.top_p}")
    if hw.device not in DEVICES:
        fail("hardware.device", f"must be one of {', '.join(DEVICES)}, got {hw.device!r}")
    if hw.dtype not in DTYPES:
        fail("hardware.dtype", f"must be one of {', '.join(DTYPES)}, got {hw.dtype!r}")
    at_least_zero("hardware", hw, "threads")
    positive("hardware", hw, "nproc_per_node")
