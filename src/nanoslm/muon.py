"""torch.optim.Muon, with its Newton-Schulz orthogonalization in float32 where bf16 is not native.

torch.optim.Muon always orthogonalizes in bfloat16. On a CPU without bf16 instructions (AVX2 laptops and
servers: no avx512_bf16 or AMX) every bf16 matmul is emulated, and Muon's step then costs more than the
forward and backward passes together (docs/experiments.md, 2026-12-02 ~15:56). Where the compute dtype is bfloat16 this class is torch's Muon
unchanged; elsewhere the same iteration (torch's coefficients and step count) runs in float32.
"""

import contextlib

import torch
import torch.optim._muon as torch_muon


def newton_schulz_float32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                          eps: float) -> torch.Tensor:
    """torch's quintic Newton-Schulz iteration (the same arguments and result) computed in float32."""
    a, b, c = ns_coefficients
    wide = grad.size(0) > grad.size(1)
    x = grad.float().T if wide else grad.float()
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


TORCH_ITERATION = "_zeropower_via_newtonschulz"  # the name torch.optim._muon's step looks up on every call


@contextlib.contextmanager
def _orthogonalize_in_float32():
    """Swap torch's bf16 iteration for the float32 one while one step runs."""
    bf16_iteration = getattr(torch_muon, TORCH_ITERATION)
    setattr(torch_muon, TORCH_ITERATION, newton_schulz_float32)
    try:
        yield
    finally:
        setattr(torch_muon, TORCH_ITERATION, bf16_iteration)


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose orthogonalization runs in bfloat16 only when bf16 is the compute dtype."""

    def __init__(self, params, *, compute_dtype: torch.dtype, **kwargs):
        super().__init__(params, **kwargs)
        self.float32_orthogonalization = compute_dtype != torch.bfloat16
        if self.float32_orthogonalization and not hasattr(torch_muon, TORCH_ITERATION):  # fail before training
            raise RuntimeError(f"torch {torch.__version__} has no torch.optim._muon.{TORCH_ITERATION}: "
                               "update nanoslm.muon for it")

    def step(self, closure=None):
        if not self.float32_orthogonalization:
            return super().step(closure)
        with _orthogonalize_in_float32():
            return super().step(closure)
