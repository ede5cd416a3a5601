"""The finetune stage: a trained checkpoint tuned on a user's data, by the training loop itself.

The source is a .jsonl of conversations in OpenAI's fine-tuning format (the loss counts the assistant's turns
only; the vocabulary grows by the four chat ids of nanoslm.conversation), or a .txt of plain text in the hub's
layout (continued pre-training: every token is learned, the vocabulary stays). Either is rendered with the
checkpoint's own tokenizer into a tokens folder beside the run (every holdout_every-th conversation or story
validates), then trained as the train stage trains, from the checkpoint's weights: same resume, logging and
checkpoints (models/tuned/{best,last}.pt, which record the chat ids).
"""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .atomic import atomic_path, write_json
from .config import GPTConfig, Params
from .conversation import ChatTokens, read_jsonl, render
from .errors import UserError
from .sources import iter_txt_stories
from .tokenizer import encoding_for, vocab_size_of
from .tokens import DTYPE, FORMAT_VERSION
from .train import train


def finetune(params: Params, base_path, data_dir, models_dir, live_dir, plot_path) -> dict:
    """Render params.finetune.source into data_dir, then tune base_path's model on it into models_dir."""
    base = checkpoint.load(base_path)
    meta = prepare(params.finetune.source, base, Path(data_dir), params.finetune.holdout_every,
                   base["model_config"]["block_size"])
    vocab_size = max(base["model_config"]["vocab_size"], meta["chat"]["end"] + 1 if meta["chat"] else 0)
    init = {"model": grown(base["model"], vocab_size), "fingerprint": _sha256(base_path)}
    return train(tuned_params(params, base, vocab_size), data_dir, models_dir, live_dir, plot_path, init=init)


def tuned_params(params: Params, base: dict, vocab_size: int) -> Params:
    """The params the tuning run trains with: the base checkpoint's model and vocabulary (whatever params.yaml's
    say now, grown to vocab_size), train's optimizer and batch, and finetune's budget and learning rate."""
    ft, tc = params.finetune, params.train
    return dataclasses.replace(
        params,
        tokenizer=dataclasses.replace(params.tokenizer, vocab_size=vocab_size_of(base["tokenizer"])),
        model=GPTConfig(**{**base["model_config"], "vocab_size": vocab_size}),
        train=dataclasses.replace(tc, max_iters=ft.max_iters, lr_decay_iters=ft.max_iters, lr=ft.lr, min_lr=0.0,
                                  muon_lr=tc.muon_lr * ft.lr / tc.lr, warmup_iters=min(ft.warmup_iters, ft.max_iters),
                                  eval_interval=ft.eval_interval, eval_iters=ft.eval_iters,
                                  checkpoint_interval=ft.eval_interval,
                                  log_interval=min(tc.log_interval, ft.eval_interval)),
        # 0 steps: the base is scored and saved as it is, so there is nothing worth compiling
        hardware=params.hardware if ft.max_iters else dataclasses.replace(params.hardware, compile=False))


def prepare(source, base: dict, out_dir: Path, holdout_every: int, block_size: int) -> dict:
    """Write out_dir/{train,validation}.bin, their .learn.bin masks and meta.json from the source; its meta."""
    enc = encoding_for(base["tokenizer"], source="the base checkpoint")
    is_chat = str(source).endswith(".jsonl")
    if is_chat:
        chat = ChatTokens.after(enc.n_vocab)  # a chat base (pre-trained with requests) has these same ids
        pieces = [(*render(c, enc, chat), sum(len(m["content"].encode()) for m in c if m["role"] == "assistant"))
                  for c in read_jsonl(source, enc, chat, block_size)]
    elif Path(source).is_file():
        chat = ChatTokens(**base["chat"]) if "chat" in base else None  # plain text keeps a chat model's role ids
        pieces = []
        for story in iter_txt_stories(source):
            ids = enc.encode_ordinary(story) + [enc.eot_token]  # as the tokenize stage: each story, then EOT
            pieces.append((ids, [True] * len(ids), len(story.encode())))
    else:
        raise UserError(f"finetune.source: {source} not found; give a .jsonl of conversations or a .txt file")
    held = [p for i, p in enumerate(pieces) if i % holdout_every == holdout_every - 1]
    kept = [p for i, p in enumerate(pieces) if i % holdout_every != holdout_every - 1]
    if not held or not kept:
        raise UserError(f"{source}: {len(pieces)} conversations (or stories) are too few to hold out every "
                        f"{holdout_every}th for validation; give at least {holdout_every} or lower "
                        f"finetune.holdout_every")
    for name, part in (("train", kept), ("validation", held)):
        tokens = sum(len(ids) for ids, *_ in part)
        if tokens <= block_size:
            raise UserError(f"{source}: its {name} part ({len(part)} conversations or stories held "
                            f"{'out' if name == 'validation' else 'in'}) is {tokens} tokens, fewer than one window of "
                            f"the model's context ({block_size + 1}); give more text or lower finetune.holdout_every")
    lead = [] if is_chat else [enc.eot_token]  # a conversation opens with its own EOT; plain text's first story not
    splits = {name: _write_split(out_dir, name, part, lead) for name, part in (("train", kept), ("validation", held))}
    meta = {"format_version": FORMAT_VERSION, "tokenizer": base["tokenizer"], "vocab_size": enc.n_vocab,
            "eot_token": enc.eot_token, "dtype": np.dtype(DTYPE).name,
            "chat": dataclasses.asdict(chat) if chat else None, "splits": splits}
    write_json(out_dir / "meta.json", meta)
    return meta


def _write_split(out_dir: Path, name: str, pieces: list, lead: list[int]) -> dict:
    """One split's tokens (lead, then each piece's ids) and their learn flags (lead's are not learned)."""
    ids, learn = list(lead), [False] * len(lead)
    for piece_ids, piece_learn, _ in pieces:
        ids += piece_ids
        learn += piece_learn
    for suffix, values, dtype in ((".bin", ids, DTYPE), (".learn.bin", learn, np.uint8)):
        with atomic_path(out_dir / f"{name}{suffix}") as tmp:
            np.asarray(values, dtype=dtype).tofile(tmp)
    return {"stories": len(pieces), "tokens": len(ids), "targets": int(sum(learn)),
            "bytes": sum(nbytes for *_, nbytes in pieces)}


def grown(state: dict, vocab_size: int) -> dict:
    """A base model's weights with the (tied) token embedding grown to vocab_size rows: new ids start at the
    mean of the existing rows, so they begin as an average token rather than noise."""
    state = dict(state)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        weight = state[key]
        if weight.size(0) < vocab_size:
            extra = weight.mean(dim=0, keepdim=True).expand(vocab_size - weight.size(0), -1)
            state[key] = torch.cat([weight, extra])
    return state


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
