"""A decoder-only transformer (GPT-2 style, pre-LayerNorm), after nanoGPT's model.py."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .head_loss import head_loss
from .muon import Muon


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop just the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def causal_attention(q, k, v, dropout_p: float):
    """Causal self-attention of (B, heads, T, head_size) queries, keys and values.

    Training on CPU: two matmuls around a float32 softmax, faster (forward + backward) than
    scaled_dot_product_attention's CPU flash kernel at our sizes (docs/experiments.md, 2026-12-03 08:08), for
    (B, heads, T, T) scores of memory. Elsewhere, and without gradients (evaluation, generation, whose KV-cache
    path must agree with it token for token), SDPA's fused kernels.
    """
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(weights, dropout_p) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:  # inference (nanoslm.engine): store this chunk's keys and values, attend to every cached one
            k, v = kv_cache.update(k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_cache.mask, is_causal=kv_cache.is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=LayerNorm(cfg.n_embd, cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix embeds and predicts
        self.apply(self._init_weights)
        # GPT-2's scaled init: keeps the residual stream's variance flat as layers are added
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count (the tied head counted once); embeddings=False leaves out both embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward):

            6 * (N + n_embd * vocab_size) + 12 * n_layer * n_embd * block_size

        N is the parameter count outside the two embedding tables; n_embd * vocab_size is the LM head's
        matmul (tied to the token embedding, so not in N). Each weight costs 2 FLOPs per token forward and
        4 backward. The last term is attention's QK^T and AV (2 * 2 * n_embd * block_size per token and
        layer forward, x3 with backward), counted over the full block as nanoGPT and PaLM do.
        """
        cfg = self.config
        matmuls = self.num_params(embeddings=False) + cfg.n_embd * cfg.vocab_size
        return 6 * matmuls + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def hidden(self, idx, kv_cache=None):
        """Final hidden states (B, T, n_embd) for token ids (B, T).

        kv_cache (inference only, see nanoslm.engine) holds earlier tokens' keys and values: it gives the new
        tokens' positions (`pos`, (B, T)) and one cache per layer (`layers`); idx then holds only the new tokens.
        """
        T = idx.size(1)
        if kv_cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            pos = torch.arange(T, device=idx.device)
            layer_caches = [None] * len(self.transformer.h)
        else:
            pos, layer_caches = kv_cache.pos, kv_cache.layers
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block, layer_cache in zip(self.transformer.h, layer_caches):
            x = block(x, layer_cache)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, learn=None, reduction: str = "mean", kv_cache=None):
        """With targets: the cross-entropy loss (float32), over the targets where `learn` (a bool mask) is true when
        it is given. Without: logits of the last position only."""
        x = self.hidden(idx, kv_cache)
        if targets is None:
            return self.lm_head(x[:, -1, :]).float()
        return head_loss(x, self.lm_head.weight, targets, reduction, learn)

    def optimizers(self, lr, weight_decay, betas, fused=None, muon_lr=None,
                   compute_dtype=torch.float32) -> list[torch.optim.Optimizer]:
        """[AdamW] over every parameter: matrices decay; biases, norms and 1-d params do not.

        With muon_lr: [AdamW, Muon]. torch.optim.Muon (its update's RMS matched to AdamW's) takes the 2-D
        matrices inside the transformer blocks; AdamW at lr keeps the embeddings, the tied head, norms and
        biases; it orthogonalizes in bf16 only when compute_dtype is bf16 (nanoslm.muon says why). fused: AdamW's
        (None = torch's default).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        in_blocks = {id(p) for p in self.transformer.h.parameters()}
        muon = [p for p in params if p.dim() == 2 and id(p) in in_blocks] if muon_lr is not None else []
        decay = [p for p in params if p.dim() >= 2 and id(p) not in {id(m) for m in muon}]
        no_decay = [p for p in params if p.dim() < 2]
        adamw = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, fused=fused)
        if not muon:
            return [adamw]
        return [adamw, Muon(muon, compute_dtype=compute_dtype, lr=muon_lr, weight_decay=weight_decay,
                            adjust_lr_fn="match_rms_adamw")]
