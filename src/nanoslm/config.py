"""Every setting of the pipeline as typed, frozen, validated sections; params.yaml is read here and nowhere else.

A section checks its values when it is made, so a value from params.yaml, a CLI flag, a bench preset or
`Params.updated` goes through the same checks and fails with the same one-line ConfigError naming the key.
"""

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import sampling
from .conversation import MARKERS
from .errors import UserError
from .gpt2 import MIN_VOCAB, N_VOCAB
from .sections import ConfigError, Section, build

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZERS = ("gpt2",)
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
WINDOWS = ("passes", "random")


def cpu_threads(threads: int) -> int:
    """The thread count a `threads` setting means: 0 = every core."""
    return threads or os.cpu_count() or 1


@dataclass(frozen=True)
class DataConfig(Section):
    SECTION = "data"
    source: str  # Hugging Face dataset id, or a local file / directory
    max_train_stories: typing.Optional[int]  # null = all
    max_val_stories: typing.Optional[int]
    holdout_every: int  # single-file sources: every Nth story goes to validation

    def validate(self):
        if not self.source.strip():
            self._fail("source", "is empty; give a Hugging Face dataset id or a local path")
        for name in ("max_train_stories", "max_val_stories"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                self._fail(name, f"must be positive or null (no cap), got {getattr(self, name)}")
        self._positive("holdout_every")


@dataclass(frozen=True)
class TokenizerConfig(Section):
    SECTION = "tokenizer"
    name: str
    vocab_size: int  # 50257 = GPT-2 as it is; fewer = GPT-2 restricted to the train split's most frequent tokens
    batch_stories: int  # stories encoded per batch; bounds tokenize's memory

    def validate(self):
        self._one_of("name", TOKENIZERS)
        if not MIN_VOCAB <= self.vocab_size <= N_VOCAB:
            self._fail("vocab_size", f"must be between {MIN_VOCAB} (GPT-2's 256 bytes and <|endoftext|>) and "
                                     f"{N_VOCAB} (all of GPT-2), got {self.vocab_size}")
        self._positive("batch_stories")


@dataclass(frozen=True)
class GPTConfig(Section):
    SECTION = "model"
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool

    def validate(self):
        self._positive("block_size", "vocab_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head:
            self._fail("n_embd", f"({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            self._fail("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION = "train"
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
    windows: str  # passes | random: train windows drawn without or with replacement (batches.py)

    def validate(self):
        self._positive("batch_size", "grad_accum_steps", "lr", "eval_interval", "eval_iters", "log_interval",
                       "checkpoint_interval")
        self._at_least_zero("max_iters", "min_lr", "warmup_iters", "weight_decay", "grad_clip", "seed")
        if self.min_lr > self.lr:
            self._fail("min_lr", f"({self.min_lr}) must not exceed train.lr ({self.lr})")
        if self.lr_decay_iters < self.warmup_iters:
            self._fail("lr_decay_iters", f"({self.lr_decay_iters}) must be at least train.warmup_iters "
                                         f"({self.warmup_iters})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                self._fail(name, f"must be in [0, 1), got {getattr(self, name)}")
        self._one_of("optimizer", OPTIMIZERS)
        self._positive("muon_lr")
        self._one_of("schedule", SCHEDULES)
        if not 0 < self.decay_frac <= 1:
            self._fail("decay_frac", f"must be in (0, 1], got {self.decay_frac}")
        self._one_of("windows", WINDOWS)


@dataclass(frozen=True)
class FinetuneConfig(Section):
    SECTION = "finetune"
    source: str  # a .jsonl of conversations (OpenAI's fine-tuning format) or a .txt of plain text
    holdout_every: int  # every Nth conversation (or story) of the source validates the run
    max_iters: int  # optimizer steps; the rest of the schedule and optimizer is train's
    lr: float  # AdamW's peak learning rate (Muon's is train.muon_lr scaled alike)
    warmup_iters: int
    eval_interval: int  # steps between validation runs and checkpoints (models/tuned/last.pt)
    eval_iters: int  # validation batches per evaluation

    def validate(self):
        self._positive("holdout_every", "lr", "eval_interval", "eval_iters")
        self._at_least_zero("max_iters", "warmup_iters")
        if self.holdout_every < 2:
            self._fail("holdout_every", f"must be at least 2 (one in N goes to validation), got {self.holdout_every}")
        if self.warmup_iters > self.max_iters > 0:  # 0 steps: no fine-tune, so no warmup to fit in
            self._fail("warmup_iters", f"({self.warmup_iters}) must not exceed finetune.max_iters ({self.max_iters})")


@dataclass(frozen=True)
class RequestsConfig(Section):
    SECTION = "requests"
    mix: float  # share of train stories pre-trained as a conversation: a request derived from the story, then it
    spare: int  # ... among those whose conversation leaves at least this many tokens of the context unused

    def validate(self):
        if not 0 <= self.mix <= 1:
            self._fail("mix", f"must be between 0 (plain stories only) and 1 (a request before every story), "
                              f"got {self.mix}")
        self._at_least_zero("spare")


@dataclass(frozen=True)
class InstructConfig(Section):
    SECTION = "instruct"
    requests: int  # held-out requests scored (the first N of data/requests/validation.jsonl)
    seeds: typing.List[int]  # one story per request and seed, sampled with the sample settings
    nudge: float  # > 0: also score stories sampled with this logit boost towards the requested words; 0 = off

    def validate(self):
        self._positive("requests")
        self._at_least_zero("nudge")
        if len(self.seeds) < 1 or any(s < 0 for s in self.seeds):
            self._fail("seeds", f"must be a non-empty list of seeds (0 or more), got {self.seeds}")


@dataclass(frozen=True)
class EvalConfig(Section):
    SECTION = "eval"
    batch_size: int

    def validate(self):
        self._positive("batch_size")


@dataclass(frozen=True)
class Sampling(Section):
    """How to pick each new token: the sample stage's, the CLI's and the server's settings.

    Types, ranges, defaults and what turns a setting off are nanoslm.sampling's table; the defaults are the
    CLI's, the sample stage takes every value from params.yaml.
    """

    SECTION = "sample"
    max_new_tokens: int = sampling.MAX_NEW_TOKENS.default
    temperature: float = sampling.TEMPERATURE.default  # 0 = greedy (top_k and top_p then do nothing)
    top_k: typing.Optional[int] = sampling.TOP_K.default  # None = off: all tokens
    top_p: float = sampling.TOP_P.default  # 1.0 = off

    def validate(self):
        for f in sampling.FIELDS:  # a vocabulary-bound one is checked against its model by `check`
            if not f.allows(getattr(self, f.name), high=math.inf if f.vocab_bound else None):
                self._fail(f.name, f.problem(getattr(self, f.name)))

    def check(self, vocab_size: int) -> "Sampling":
        """Self, after checking top_k against a model's vocabulary; a ConfigError otherwise."""
        if not sampling.TOP_K.allows(self.top_k, high=vocab_size):
            self._fail("top_k", f"must be at most the vocabulary size ({vocab_size}), or null (off), got {self.top_k}")
        return self


@dataclass(frozen=True)
class SampleConfig(Sampling):
    """The sample stage: Sampling's settings, plus the prompts, the requests a chat model answers, and the seed of
    the first of each."""

    prompts: typing.List[str] = field(kw_only=True)
    requests: typing.List[str] = field(kw_only=True)
    seed: int = field(kw_only=True)

    def validate(self):
        if not self.prompts:
            self._fail("prompts", "is empty; list at least one prompt")
        super().validate()
        self._at_least_zero("seed")


@dataclass(frozen=True)
class HardwareConfig(Section):
    SECTION = "hardware"
    device: str  # auto | cpu | cuda | mps
    dtype: str  # auto | float32 | bfloat16 | float16
    compile: bool
    threads: int  # 0 = every core (see cpu_threads)
    nproc_per_node: int  # training processes on this machine; > 1 runs the train stage under torchrun (DDP)

    def validate(self):
        self._one_of("device", DEVICES)
        self._one_of("dtype", DTYPES)
        self._at_least_zero("threads")
        self._positive("nproc_per_node")


@dataclass(frozen=True)
class Params:
    data: DataConfig
    tokenizer: TokenizerConfig
    requests: RequestsConfig
    model: GPTConfig
    train: TrainConfig
    finetune: FinetuneConfig
    instruct: InstructConfig
    eval: EvalConfig
    sample: SampleConfig
    hardware: HardwareConfig

    def __post_init__(self):
        """Checks that span sections."""
        chat_ids = len(MARKERS) if self.requests.mix > 0 else 0  # conversations add the role ids after the tokenizer's
        needed = self.tokenizer.vocab_size + chat_ids
        if self.model.vocab_size < needed:
            plus = f" + the {chat_ids} chat ids of requests.mix > 0" if chat_ids else ""
            raise ConfigError("model.vocab_size", f"({self.model.vocab_size}) must be at least tokenizer.vocab_size "
                                                  f"({self.tokenizer.vocab_size}){plus}; set it to {needed}")
        if self.requests.spare >= self.model.block_size:
            raise ConfigError("requests.spare", f"({self.requests.spare}) must be less than model.block_size "
                                                f"({self.model.block_size}), or no story could carry a request")
        self.sample.check(self.model.vocab_size)
        accum, procs = self.train.grad_accum_steps, self.hardware.nproc_per_node
        if accum % procs:
            raise ConfigError("train.grad_accum_steps", f"({accum}) must be divisible by hardware.nproc_per_node "
                                                        f"({procs}): each process takes an equal share of the "
                                                        f"micro-batches; set it to {-(-accum // procs) * procs}")

    def updated(self, section: str, **values) -> "Params":
        """A copy with some values of one section changed, e.g. params.updated("train", max_iters=10); checked
        as params.yaml is."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


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
    try:
        return build(Params, raw, prefix="")
    except ConfigError as err:
        raise UserError(f"{path}: {err}") from None
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
