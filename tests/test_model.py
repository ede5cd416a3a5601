import math

import pytest
import torch
import torch.nn.functional as F

from nanoslm.config import GPTConfig
from nanoslm.model import GPT, causal_attention

CFG = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)


def make(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def tokens(B, T, seed=1, vocab=CFG.vocab_size):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_output_shapes():
    model = make()
    idx, targets = tokens(3, 10), tokens(3, 10, seed=2)
    loss = model(idx, targets)
    assert loss.shape == () and loss.dtype == torch.float32
    # an untrained model with 0.02-std weights predicts nearly uniformly: loss close to ln(vocab)
    assert abs(loss.item() - math.log(CFG.vocab_size)) < 0.1
    logits = model(idx)
    assert logits.shape == (3, CFG.vocab_size) and logits.dtype == torch.float32
    assert model.hidden(idx).shape == (3, 10, CFG.n_embd)


def test_loss_and_logits_match_a_hand_computed_head():
    model = make()
    idx, targets = tokens(2, 12), tokens(2, 12, seed=2)
    with torch.no_grad():
        logits = model.hidden(idx) @ model.lm_head.weight.T
        expected = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), targets.reshape(-1))
        expected_sum = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), targets.reshape(-1), reduction="sum")
        torch.testing.assert_close(model(idx, targets), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(idx, targets, reduction="sum"), expected_sum, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model(idx), logits[:, -1, :], rtol=1e-5, atol=1e-6)


def test_lm_head_is_tied_to_the_token_embedding():
    model = make()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        model.transformer.wte.weight[5, 0] = 123.0
    assert model.lm_head.weight[5, 0].item() == 123.0
    # one parameter, listed once
    params = list(model.parameters())
    assert sum(p is model.lm_head.weight for p in params) == 1
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_causal():
    model = make(GPTConfig(block_size=16, vocab_size=50257, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                           bias=True))
    idx = tokens(2, 12)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, b = model.hidden(idx), model.hidden(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().amax(dim=-1).min() > 1e-4  # the changed position and every later one


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_attention_matches_sdpa_forward_and_backward(dtype, tol, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v, upstream = (torch.randn(2, 3, 16, 8, generator=g).to(dtype) for _ in range(4))
    sdpa = F.scaled_dot_product_attention
    results = []
    for attend, kernel in ((lambda *qkv: causal_attention(*qkv, 0.0), None),  # must not call SDPA
                           (lambda *qkv: sdpa(*qkv, is_causal=True), sdpa)):
        monkeypatch.setattr(F, "scaled_dot_product_attention", kernel)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attend(*leaves)
        out.backward(upstream)
        results.append([out.detach().float()] + [t.grad.float() for t in leaves])
    assert results[0][0].dtype == torch.float32 and len(results[0]) == 4
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


def test_cpu_attention_dropout_drops_attention_weights():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    assert torch.is_grad_enabled()  # the matmul path is the one taken with gradients on (training)
    assert torch.count_nonzero(causal_attention(q, k, v, 1.0)) == 0  # every weight dropped
    torch.manual_seed(0)
    half = causal_attention(q, k, v, 0.5)
    assert not torch.allclose(half, causal_attention(q, k, v, 0.0))


def test_sequence_longer_than_block_size_raises():
    model = make()
    model(tokens(1, CFG.block_size))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, CFG.block_size + 1))


def test_scaled_init_of_residual_projections():
    cfg = GPTConfig(block_size=16, vocab_size=50257, n_layer=4, n_head=2, n_embd=64, dropout=0.0, bias=True)
    model = make(cfg)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    seen = 0
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(scaled, rel=0.05), name
            seen += 1
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith(".bias") and "ln_" not in name:
            assert torch.count_nonzero(p) == 0, name
    assert seen == 2 * cfg.n_layer


def test_optimizer_groups():
    cfg = GPTConfig(block_size=16, vocab_size=50257, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    model = make(cfg)
    (opt,) = model.optimizers(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter twice (the tied head/embedding included)
    assert set(grouped) == {id(p) for p in model.parameters()}
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[id(p)] for p in decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith("weight") and "ln_" not in n}
    assert any(named[id(p)].endswith("c_attn.bias") for p in no_decay["params"])
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    cfg = GPTConfig(block_size=16, vocab_size=50257, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    model = make(cfg)
    adamw, muon = model.optimizers(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), muon_lr=2e-2)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    named = {id(p): n for n, p in model.named_parameters()}
    names = lambda opt: sorted(named[id(p)] for g in opt.param_groups for p in g["params"])  # noqa: E731
    assert names(muon) == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                 for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    decay, no_decay = adamw.param_groups
    assert sorted(named[id(p)] for p in decay["params"]) == ["transformer.wpe.weight", "transformer.wte.weight"]
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert sorted(names(adamw) + names(muon)) == sorted(named.values())  # each parameter once (the tied head too)
    assert muon.defaults["lr"] == 2e-2 and muon.defaults["weight_decay"] == 0.1
    assert muon.defaults["adjust_lr_fn"] == "match_rms_adamw" and adamw.defaults["lr"] == 1e-3
    assert muon.float32_orthogonalization  # the compute dtype defaults to float32: bf16 only when asked
    _, bf16_muon = model.optimizers(1e-3, 0.1, (0.9, 0.95), muon_lr=2e-2, compute_dtype=torch.bfloat16)
    assert not bf16_muon.float32_orthogonalization


def test_flops_per_token_matches_a_count_of_the_matmuls():
    """6 FLOPs per weight and token plus attention over the full block, against torch's own FLOP counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False)
    model = make(cfg).train()
    idx = tokens(1, cfg.block_size, vocab=cfg.vocab_size)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # attention as plain matmuls
        model(idx, idx).backward()
    norm_weights = sum(p.numel() for n, p in model.named_parameters() if "ln_" in n)  # no matmul: not counted
    assert counter.get_total_flops() / cfg.block_size == model.flops_per_token() - 6 * norm_weights
