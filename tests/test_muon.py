"""nanoslm.muon: torch's Muon where bf16 is the compute dtype, the same iteration in float32 elsewhere."""

import pytest
import torch
import torch.optim._muon as torch_muon

from nanoslm.muon import Muon, newton_schulz_float32

COEFFICIENTS = (torch_muon.DEFAULT_A, torch_muon.DEFAULT_B, torch_muon.DEFAULT_C)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_float32_iteration_is_torchs_iteration_at_higher_precision(shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz_float32(grad, COEFFICIENTS, 5, 1e-7)
    torchs = torch_muon._zeropower_via_newtonschulz(grad, COEFFICIENTS, 5, 1e-7)
    assert ours.dtype == torch.float32 and ours.shape == grad.shape
    torch.testing.assert_close(ours, torchs.float(), atol=2e-2, rtol=0)  # bf16 keeps ~3 significant digits
    # it does orthogonalize: the singular values land near 1 (the quintic leaves them in about [0.5, 1.5])
    assert torch.linalg.svdvals(ours).sub(1).abs().max() < 0.5
    # and differs from torch's in the way float32 differs from bf16, not by being the same numbers
    assert not torch.equal(ours, torchs.float())


def _two_steps(optimizer_class, **kwargs):
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(24, 8)), torch.nn.Parameter(torch.randn(8, 8))]
    optimizer = optimizer_class(weights, lr=0.02, adjust_lr_fn="match_rms_adamw", **kwargs)
    for _ in range(2):
        for w in weights:
            w.grad = torch.randn_like(w)
        optimizer.step()
    return weights, optimizer


def test_with_bf16_compute_it_is_torchs_muon_bit_for_bit():
    ours, _ = _two_steps(Muon, compute_dtype=torch.bfloat16)
    torchs, _ = _two_steps(torch.optim.Muon)
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


def test_with_float32_compute_it_orthogonalizes_in_float32_for_the_step_only(monkeypatch):
    calls = []
    monkeypatch.setattr("nanoslm.muon.newton_schulz_float32",
                        lambda grad, *args: calls.append(grad.dtype) or newton_schulz_float32(grad, *args))
    ours, optimizer = _two_steps(Muon, compute_dtype=torch.float32)
    torchs, _ = _two_steps(torch.optim.Muon)
    assert calls == [torch.float32] * 4  # two matrices, two steps
    assert torch_muon._zeropower_via_newtonschulz.__module__ == "torch.optim._muon"  # restored after each step
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=0)
        assert not torch.equal(a, b)
    assert all("momentum_buffer" in s for s in optimizer.state.values())  # torch's state, so resume is unchanged
