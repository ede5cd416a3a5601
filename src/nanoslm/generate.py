"""Sampling: continue prompts with temperature and top-k, stopping at end-of-text."""

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, hardware
from .atomic import write_text
from .config import SampleConfig
from .model import GPT
from .tokenizer import get_encoding


@torch.no_grad()
def generate(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float, top_k, eot: int,
             generator: torch.Generator, hw: hardware.Hardware) -> list[int]:
    """New token ids after `prompt` (the end-of-text token itself is not returned)."""
    model.eval()
    idx = torch.tensor([prompt or [eot]], dtype=torch.long, device=hw.device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        with hw.autocast():
            logits = model(idx[:, -model.config.block_size :])  # crop: the model sees at most block_size tokens
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(hw.device)
        if next_id.item() == eot:
            break
        new.append(next_id.item())
        idx = torch.cat([idx, next_id], dim=1)
    return new


def sample_prompts(checkpoint_path, cfg: SampleConfig, hw: hardware.Hardware) -> tuple[list[dict], dict]:
    """One continuation per prompt, and the checkpoint's metadata.

    Prompt i uses seed cfg.seed + i, so adding a prompt changes no other sample.
    """
    model, state = checkpoint.load_model(checkpoint_path, hw.device)
    enc = get_encoding(state["tokenizer"])
    samples = []
    for i, prompt in enumerate(tqdm(cfg.prompts, desc="sample", unit="prompt", file=sys.stderr)):
        generator = torch.Generator().manual_seed(cfg.seed + i)
        ids = generate(model, enc.encode_ordinary(prompt), cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                       enc.eot_token, generator, hw)
        samples.append({"prompt": prompt, "text": enc.decode(ids)})
    return samples, state


def write_samples(checkpoint_path, cfg: SampleConfig, hw: hardware.Hardware, out_path) -> list[dict]:
    """Sample every prompt and write them as Markdown (git-tracked, so experiments can be diffed)."""
    samples, state = sample_prompts(checkpoint_path, cfg, hw)
    top_k = "off" if cfg.top_k is None else cfg.top_k
    lines = [
        "# Samples",
        "",
        f"Checkpoint `{Path(checkpoint_path).as_posix()}` (step {state['step']}, val loss {state['val_loss']:.4f}); "
        f"temperature {cfg.temperature}, top-k {top_k}, seed {cfg.seed}, at most {cfg.max_new_tokens} new tokens.",
    ]
    for s in samples:
        lines += ["", f"## {s['prompt']}", "", f"**{s['prompt']}**{s['text']}"]
    write_text(out_path, "\n".join(lines) + "\n")
    return samples
