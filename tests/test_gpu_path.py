"""The CUDA path, as far as a CPU reaches it: the float16 step a T4 runs (autocast + GradScaler, driven on the CPU),
its skipped steps and resume, and the CUDA RNG's capture and restore. What needs a GPU is in tests/test_cuda.py
(marked `cuda`: it skips here and runs in scripts/gpu-check.sh), on the helpers below.
"""

import math

import pytest
import torch

from nanoslm import distributed, hardware
from nanoslm.config import load_params
from nanoslm.model import GPT
from nanoslm.train import lrs_at, make_optimizers, make_scaler, optimizer_step
from nanoslm.train.state import TrainState

from conftest import REPO

CPU = torch.device("cpu")
# float16 (or bf16) autocast against float32, same weights and batches, over STEPS steps: the largest loss gap in
# nats. Measured on the CPU (torch 2.13): float16 5.2e-3 with AdamW, 5.2e-4 with Muon; bfloat16 3.2e-3 and 9.4e-4.
# The bound is 4x the largest, for a GPU's kernels, and a tenth of one step's loss change here (0.23 or more), so a
# broken cast or a skipped step fails it.
LOSS_TOLERANCE = 2e-2
STEPS = 8
VOCAB, BLOCK, BATCH = 64, 16, 8  # the batches use the first VOCAB ids


def recipe(optimizer: str):
    params = load_params(REPO / "params-ci.yaml").updated("requests", mix=0.0)  # plain tokens: no chat ids
    params = params.updated("tokenizer", vocab_size=257)  # the fewest ids allowed
    params = params.updated("model", vocab_size=257, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32,
                            dropout=0.0)
    return params.updated("train", optimizer=optimizer, lr=1e-2, muon_lr=2e-2, warmup_iters=0, grad_clip=1.0,
                          batch_size=BATCH, grad_accum_steps=1, max_iters=STEPS, lr_decay_iters=STEPS)


def batch(step: int, device=CPU):
    """Step `step`'s batch: arithmetic sequences mod VOCAB, which a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(step)
    start, stride = torch.randint(0, VOCAB, (BATCH, 1), generator=g), torch.randint(1, 4, (BATCH, 1), generator=g)
    rows = (start + stride * torch.arange(BLOCK + 1)) % VOCAB
    return rows[:, :-1].to(device), rows[:, 1:].to(device)


def run_steps(params, hw: hardware.Hardware, steps=range(STEPS), model=None, optimizers=None, scaler=None):
    """The train stage's step (nanoslm.train.step) on `hw`; returns the losses, model, optimizers and scaler."""
    if model is None:
        torch.manual_seed(0)
        model = GPT(params.model).to(hw.device)  # built on the CPU from the seed: the same weights everywhere
        optimizers, scaler = make_optimizers(model, params.train, hw), make_scaler(hw)
    losses = [optimizer_step(model, optimizers, scaler, [batch(s, hw.device)], lrs_at(s, params.train),
                             params.train.grad_clip, hw).item() for s in steps]
    return losses, model, optimizers, scaler


def gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# ---- float16 as a T4 runs it: autocast + GradScaler, on the CPU ----

@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_float16_training_steps_match_float32_within_tolerance(optimizer):
    params = recipe(optimizer)
    fp32, *_ = run_steps(params, hardware.Hardware(CPU, torch.float32))
    fp16, _, _, scaler = run_steps(params, hardware.Hardware(CPU, torch.float16))
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16  # the scaler ran, and no step overflowed
    assert all(math.isfinite(x) for x in fp16)
    assert fp32[-1] < fp32[0] - 0.5  # it learns: a step that did nothing would show as a gap
    assert gap(fp16, fp32) < LOSS_TOLERANCE, (fp16, fp32)


def snapshot(model, optimizers) -> dict:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizers": [{i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                            for i, s in o.state_dict()["state"].items()} for o in optimizers]}


def assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "the weights moved"
    for sa, sb in zip(a["optimizers"], b["optimizers"], strict=True):
        assert sa.keys() == sb.keys()
        for i in sa:
            assert all(torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for k in sa[i]), i


def poison(param: torch.nn.Parameter):
    """An overflow in this parameter's gradient (what float16 gives when the loss scale is too high)."""
    return param.register_hook(lambda grad: torch.full_like(grad, math.inf))


@pytest.mark.parametrize("where", ["muon matrix", "adamw embedding"])
def test_an_inf_gradient_skips_the_step_of_adamw_and_muon_alike(where):
    """GradScaler decides per optimizer; an inf in Muon's matrices alone must not let AdamW step on clipped
    (zeroed or NaN) gradients, nor the reverse: a skipped step leaves weights and both optimizers' state as they were."""
    params = recipe("muon")
    hw = hardware.Hardware(CPU, torch.float16)
    _, model, optimizers, scaler = run_steps(params, hw, range(2))  # both optimizers have state by now
    before = snapshot(model, optimizers)
    param = model.transformer.h[0].mlp.c_fc.weight if where == "muon matrix" else model.transformer.wpe.weight
    handle = poison(param)
    loss, *_ = run_steps(params, hw, [2], model, optimizers, scaler)
    handle.remove()
    assert math.isfinite(loss[0])  # the forward pass was fine; only the gradient overflowed
    assert_same(snapshot(model, optimizers), before)
    assert scaler.get_scale() == 2.0**15  # the next step tries a halved scale
    run_steps(params, hw, [2], model, optimizers, scaler)  # training goes on
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, before["model"]["transformer.h.0.mlp.c_fc.weight"])


def test_float16_head_gradient_of_a_large_batch_does_not_overflow():
    """The head's gradient, summed over 20,000 tokens before the loss scale and 1/tokens reach it, passed
    float16's 65,504: every step was skipped, and shrinking the scale could not help."""
    from nanoslm.head_loss import head_loss

    hidden = torch.full((20_000, 16), 4.0, requires_grad=True)
    weight = (0.02 * torch.randn(32, 16)).requires_grad_()
    with hardware.Hardware(CPU, torch.float16).autocast():
        loss = head_loss(hidden, weight, torch.zeros(20_000, dtype=torch.long))
    (loss * 1024).backward()  # a GradScaler's scale
    expected = torch.autograd.grad(head_loss(hidden, weight, torch.zeros(20_000, dtype=torch.long)), weight)[0]
    assert torch.isfinite(weight.grad).all()
    torch.testing.assert_close(weight.grad / 1024, expected, rtol=2e-3, atol=1e-3)


def test_float16_resume_restores_the_grad_scaler_and_continues_exactly(tmp_path):
    """last.pt holds the GradScaler's scale (halved here by an overflow): a resumed float16 run goes on as if never
    stopped, bit for bit."""
    params = recipe("muon")
    hw, ranks = hardware.Hardware(CPU, torch.float16), distributed.Ranks()
    meta = {"tokenizer": "gpt2", "splits": {}}

    def new_state():
        torch.manual_seed(0)
        return TrainState(params, meta, hw, ranks)

    def steps(state, span, overflow_at=None):
        for s in span:
            handle = poison(state.model.transformer.h[1].attn.c_attn.weight) if s == overflow_at else None
            run_steps(params, hw, [s], state.model, state.optimizers, state.scaler)
            if handle:
                handle.remove()
            state.progress.step = s + 1

    first = new_state()
    steps(first, range(3), overflow_at=1)
    first.progress.val_points.append((3, 1.0))
    first.save(tmp_path / "last.pt")
    scaler_at_save = first.scaler.state_dict()
    assert scaler_at_save["scale"] == 2.0**15 and scaler_at_save["_growth_tracker"] == 1
    steps(first, range(3, STEPS))

    resumed = new_state()
    assert resumed.resume(tmp_path / "last.pt", STEPS, say=lambda msg: None)
    assert resumed.scaler.state_dict() == scaler_at_save
    steps(resumed, range(3, STEPS))
    assert resumed.scaler.state_dict() == first.scaler.state_dict()
    assert_same(snapshot(resumed.model, resumed.optimizers), snapshot(first.model, first.optimizers))


# ---- the CUDA generator's state in last.pt ----

def test_cuda_rng_state_is_saved_and_restored_for_the_runs_gpu(monkeypatch):
    """Dropout on a GPU draws from the CUDA generator: a resumed run must restore it on its own device.

    Faked (no CPU path exists): torch.cuda.get_rng_state and torch.cuda.set_rng_state only. The Python, numpy and
    torch CPU generators are real, and are checked to come back exactly.
    """
    calls = []
    cuda_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", state, device)))
    torch.manual_seed(0)
    state = TrainState(recipe("adamw"), {"tokenizer": "gpt2", "splits": {}}, hardware.Hardware(CPU, torch.float32),
                       distributed.Ranks())
    gpu = torch.device("cuda", 1)
    state.hw = hardware.Hardware(gpu, torch.bfloat16)  # as on rank 1's GPU (the model stays on the CPU)
    saved = state._rank_state()
    assert calls == [("get", gpu)] and torch.equal(saved["cuda"], cuda_state)
    expected = torch.rand(3)
    state._restore_rank_state(saved)
    assert calls[1][0] == "set" and torch.equal(calls[1][1], cuda_state) and calls[1][2] == gpu
    assert calls[1][1].device.type == "cpu"  # set_rng_state takes a CPU ByteTensor, wherever last.pt was mapped
    assert torch.equal(torch.rand(3), expected)

    state.hw = hardware.Hardware(CPU, torch.bfloat16)  # a GPU's last.pt resumed on a CPU: no CUDA call
    state._restore_rank_state(saved)
    assert len(calls) == 2 and state._rank_state()["cuda"] is None
