import subprocess
import sys

import pytest
import torch

from nanoslm import hardware
from nanoslm.config import HardwareConfig
from nanoslm.errors import UserError
from nanoslm.hardware import Hardware


@pytest.fixture(autouse=True)
def keep_thread_count():
    """setup() sets torch's thread count for the whole process; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def hw_cfg(device="cpu", dtype="float32", threads=1):
    return HardwareConfig(device=device, dtype=dtype, compile=False, threads=threads, nproc_per_node=1)


def test_cpu():
    hw = hardware.setup(hw_cfg(threads=1))
    assert hw.device == torch.device("cpu") and hw.device_type == "cpu"
    assert hw.dtype == torch.float32
    assert torch.get_num_threads() == 1
    assert hardware.setup(hw_cfg(dtype="bfloat16")).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="hardware.device"):
        hardware.setup(hw_cfg(device="cuda"))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_a_user_error():
    with pytest.raises(UserError, match="hardware.device"):
        hardware.setup(hw_cfg(device="mps"))


def test_float16_on_cpu_is_a_user_error():
    with pytest.raises(UserError, match="hardware.dtype float16"):
        hardware.setup(hw_cfg(dtype="float16"))


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.setup(hw_cfg(dtype="auto")).dtype == expected


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),  # x86 with AVX-512 BF16
    ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ("fpu sse2 avx2 avx512f", False),  # AVX-512 without its bf16 extension
])
def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n", encoding="utf-8")
    assert hardware.cpu_has_native_bf16(str(info)) is expected
    assert hardware.cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_autocast_is_a_no_op_for_float32():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Hardware(torch.device("cpu"), torch.float32).autocast():
        assert not torch.is_autocast_enabled("cpu")
        out = a @ b
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, a @ b, rtol=0, atol=0)


def test_autocast_bf16_runs_matmuls_in_bf16():
    with Hardware(torch.device("cpu"), torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu")
        out = torch.randn(4, 4) @ torch.randn(4, 4)
    assert out.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


RSS_AFTER_FREE = """
import sys, torch
from nanoslm import hardware
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) * 1024
if sys.argv[1] == "tuned":
    hardware.keep_freed_memory()
before = rss()
x = torch.ones(1 << 26)  # 256 MiB, touched
del x
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc are Linux's")
def test_keep_freed_memory_keeps_a_freed_block_mapped():
    """Without the tuning glibc hands a freed 256 MiB block back to the OS; with it the block stays for reuse."""
    def grown(mode):
        out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout) / 2**20
    assert grown("plain") < 64
    assert grown("tuned") > 200


# ---- dtype: auto on the GPUs users have, decided from a device's capabilities (no GPU needed) ----

T4, V100, A100, H100 = (7, 5), (7, 0), (8, 0), (9, 0)


@pytest.mark.parametrize("capability, expected", [(T4, torch.float16), (V100, torch.float16),
                                                  (A100, torch.bfloat16), (H100, torch.bfloat16)])
def test_auto_dtype_on_cuda_is_float16_where_the_gpu_has_no_bf16(capability, expected):
    """A Colab T4 must train in float16 with the GradScaler, not in emulated bfloat16."""
    native = hardware.cuda_has_native_bf16(capability)
    assert hardware.choose_dtype("auto", "cuda", native) == expected


def test_auto_dtype_on_a_t4_ignores_torchs_emulated_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a T4 (it counts emulation): the decision must not follow it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: T4)
    assert hardware._dtype("auto", torch.device("cuda")) == torch.float16


def test_bfloat16_on_a_gpu_without_it_is_a_user_error_naming_the_fix():
    with pytest.raises(UserError, match="hardware.dtype bfloat16 is not supported by this GPU.*use float16 or auto"):
        hardware.choose_dtype("bfloat16", "cuda", native_bf16=False)
    assert hardware.choose_dtype("bfloat16", "cuda", native_bf16=True) == torch.bfloat16
    assert hardware.choose_dtype("float16", "cuda", native_bf16=True) == torch.float16  # a user may still choose it


@pytest.mark.parametrize("native", [True, False])
def test_explicit_dtypes_on_cpu_do_not_depend_on_native_bf16(native):
    """float16 support for CUDA must not change what a CPU run computes in."""
    assert hardware.choose_dtype("float32", "cpu", native) == torch.float32
    assert hardware.choose_dtype("bfloat16", "cpu", native) == torch.bfloat16
    with pytest.raises(UserError, match="hardware.dtype float16 is for CUDA GPUs"):
        hardware.choose_dtype("float16", "cpu", native)
