"""Turn `hardware.*` params into a torch device, a compute dtype and thread settings."""

import contextlib
import ctypes
import platform
from dataclasses import dataclass

import torch

from .config import HardwareConfig, cpu_threads
from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast

    @property
    def device_type(self) -> str:
        return self.device.type

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def setup(cfg: HardwareConfig) -> Hardware:
    """Resolve device and dtype, and set thread counts. Raises UserError for impossible combinations."""
    device = _device(cfg.device)
    dtype = _dtype(cfg.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Hardware(device=device, dtype=dtype)


def _device(name: str) -> torch.device:
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError("hardware.device is 'cuda' but torch sees no CUDA GPU; set hardware.device: auto or cpu")
    if name == "mps" and not mps:
        raise UserError("hardware.device is 'mps' but this torch has no Apple MPS support; set hardware.device: auto or cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        native_bf16 = cuda_has_native_bf16(torch.cuda.get_device_capability(device))
    else:
        native_bf16 = device.type == "cpu" and cpu_has_native_bf16()
    return choose_dtype(name, device.type, native_bf16)


def choose_dtype(name: str, device_type: str, native_bf16: bool) -> torch.dtype:
    """hardware.dtype on a device of `device_type` that has (or lacks) bf16 arithmetic in hardware.

    auto: bfloat16 where it is native; else float16 with a GradScaler on CUDA (a T4, a V100), float32 elsewhere.
    """
    if name == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if native_bf16 else torch.float16
        return torch.bfloat16 if device_type == "cpu" and native_bf16 else torch.float32
    dtype = DTYPES[name]
    if device_type == "cpu" and dtype == torch.float16:
        raise UserError("hardware.dtype float16 is for CUDA GPUs; on a CPU use bfloat16, float32 or auto")
    if device_type == "cuda" and dtype == torch.bfloat16 and not native_bf16:
        raise UserError("hardware.dtype bfloat16 is not supported by this GPU (bf16 needs compute capability 8.0, "
                        "an A100 or newer); use float16 or auto")
    if device_type == "mps" and dtype == torch.bfloat16:
        raise UserError("hardware.dtype bfloat16 is not supported on MPS here; use float16, float32 or auto")
    return dtype


def cuda_has_native_bf16(capability: tuple[int, int]) -> bool:
    """True for GPUs with bf16 tensor cores: compute capability 8.0 (Ampere, A100) and later.

    Not torch.cuda.is_bf16_supported(): by default it counts emulation, so it says True on a T4 (7.5) too, where
    bf16 runs emulated and slower than float16, which a T4 has in hardware.
    """
    return tuple(capability) >= (8, 0)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has bf16 matrix instructions; elsewhere bf16 autocast is emulated and slower."""
    if platform.system() != "Linux":
        return False
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS.

    Training frees and re-allocates the same big tensors every step; by default glibc unmaps blocks
    over 32 MB and the kernel must zero fresh pages again each time, which slows small CPU models' steps
    several times over (docs/experiments.md, 2026-11-21). No-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**30)
