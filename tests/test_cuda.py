"""The CUDA path on a real GPU: what no CPU can run. Every test here is marked `cuda` and skips without a GPU;
scripts/gpu-check.sh runs them (and checks, in its dry run, that they are collected and skip).

Tolerances: LOSS_TOLERANCE (tests/test_gpu_path.py) for a GPU step against the float32 CPU step.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from nanoslm import checkpoint, hardware
from nanoslm.config import Sampling
from nanoslm.engine import Engine
from nanoslm.train import maybe_compile

from conftest import REPO
from test_gpu_path import BATCH, BLOCK, CPU, LOSS_TOLERANCE, STEPS, batch, gap, recipe, run_steps
from test_resume import losses, run_stage, workdir

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: scripts/gpu-check.sh")]
GPU = torch.device("cuda")


def native_bf16() -> bool:
    return hardware.cuda_has_native_bf16(torch.cuda.get_device_capability())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_gpu_training_steps_match_the_float32_cpu_step(dtype, optimizer):
    """bf16 autocast (A100 and later) or float16 + GradScaler (every GPU), fused AdamW, Muon, SDPA's kernels."""
    if dtype == torch.bfloat16 and not native_bf16():
        pytest.skip("this GPU has no bf16 tensor cores (dtype: auto picks float16 here)")
    params = recipe(optimizer)
    cpu, *_ = run_steps(params, hardware.Hardware(CPU, torch.float32))
    gpu, _, optimizers, scaler = run_steps(params, hardware.Hardware(GPU, dtype))
    assert optimizers[0].defaults["fused"]  # the CUDA AdamW kernel
    assert scaler.is_enabled() == (dtype == torch.float16)
    assert gap(gpu, cpu) < LOSS_TOLERANCE, (gpu, cpu)


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_kv_cache_greedy_tokens_equal_the_no_cache_tokens_on_cuda(dtype):
    hw = hardware.Hardware(GPU, hardware.choose_dtype(dtype, "cuda", native_bf16()))
    params = recipe("adamw").updated("train", max_iters=100, lr_decay_iters=100)
    _, model, *_ = run_steps(params, hardware.Hardware(GPU, torch.float32), range(100))  # confident: few near-ties
    greedy = Sampling(max_new_tokens=3 * BLOCK, temperature=0.0, top_k=None, top_p=1.0)
    prompt = [3, 5, 7, 9]  # past block_size: the window slides, the cache hands over to the plain path
    engine = Engine(model, hw, eot=-1)
    cached, = engine.generate([prompt], greedy, [torch.Generator().manual_seed(0)], use_cache=True)
    plain, = engine.generate([prompt], greedy, [torch.Generator().manual_seed(0)], use_cache=False)
    assert len(cached) == 3 * BLOCK and cached == plain


def test_torch_compile_works_on_cuda_and_matches_eager():
    from nanoslm.model import GPT
    from nanoslm.train import make_optimizers, make_scaler

    params = recipe("adamw")
    hw = hardware.Hardware(GPU, hardware.choose_dtype("auto", "cuda", native_bf16()))
    eager, *_ = run_steps(params, hw)
    torch.manual_seed(0)
    model = GPT(params.model).to(GPU)  # run_steps' weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = maybe_compile(model, True, (BATCH, BLOCK))
    assert compiled is not model, [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    optimizers, scaler = make_optimizers(model, params.train, hw), make_scaler(hw)
    got, *_ = run_steps(params, hw, model=compiled, optimizers=optimizers, scaler=scaler)
    assert gap(got, eager) < LOSS_TOLERANCE, (got, eager)


def test_checkpoints_move_between_cuda_and_cpu(tmp_path):
    _, model, *_ = run_steps(recipe("muon"), hardware.Hardware(GPU, torch.float32))
    checkpoint.save(tmp_path / "gpu.pt", model, step=STEPS, val_loss=1.0, tokenizer="gpt2")
    on_cpu, _ = checkpoint.load_model(tmp_path / "gpu.pt")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(model.state_dict().values(), on_cpu.state_dict().values()))
    checkpoint.save(tmp_path / "cpu.pt", on_cpu, step=STEPS, val_loss=1.0, tokenizer="gpt2")
    back, _ = checkpoint.load_model(tmp_path / "cpu.pt", GPU)
    assert all(t.is_cuda for t in back.state_dict().values())
    x, y = batch(0, GPU)
    with torch.no_grad():
        torch.testing.assert_close(back(x, y), model.eval()(x, y))


@pytest.fixture(scope="module")
def tokens(story_tokens) -> Path:
    return story_tokens


CUDA_RUN = {"hardware.device": "cuda", "hardware.dtype": "auto", "hardware.compile": False}


def test_an_interrupted_cuda_run_resumes_and_ends_near_the_uninterrupted_one(tmp_path, tokens):
    """Not bit for bit: SDPA's and the embedding's backward use atomic adds on CUDA (docs/gpu.md)."""
    whole = workdir(tmp_path, "whole", **CUDA_RUN)
    assert run_stage(whole, tokens).returncode == 0
    cwd = workdir(tmp_path, "stopped", **CUDA_RUN)
    first = run_stage(cwd, tokens, fault="interrupt@step:12")
    assert first.returncode == 130, first.stderr[-2000:]
    assert "on cuda x1 in " in first.stderr
    second = run_stage(cwd, tokens)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from models/last.pt at step 13 of 40" in second.stderr
    a, b = (losses(d / "dvclive/plots/metrics/val/loss.tsv") for d in (whole, cwd))
    assert [s for s, _ in a] == [s for s, _ in b]
    assert abs(float(a[-1][1]) - float(b[-1][1])) < LOSS_TOLERANCE, (a, b)


NCCL_CHECK = """
import torch, torch.distributed as dist
from nanoslm import distributed
ranks = distributed.init("cuda")
assert dist.get_backend() == "nccl", dist.get_backend()
t = torch.ones(1, device="cuda")
dist.all_reduce(t)
out = [None]
dist.all_gather_object(out, {"rank": ranks.rank})
assert t.item() == 1.0 and out == [{"rank": 0}]
dist.destroy_process_group()
print("nccl ok")
"""


def test_one_process_torchrun_trains_with_nccl(tmp_path, tokens):
    script = tmp_path / "nccl_check.py"
    script.write_text(NCCL_CHECK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    check = subprocess.run([*torchrun, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert check.returncode == 0 and "nccl ok" in check.stdout, check.stderr[-3000:]
    cwd = workdir(tmp_path, "torchrun", **CUDA_RUN, **{"train.max_iters": 20, "train.lr_decay_iters": 20})
    run = subprocess.run([*torchrun, "--no-python", sys.executable, "-P", str(REPO / "stages/train.py"),
                          str(tokens), "models", "dvclive", "plots/loss.png"], cwd=cwd, capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (cwd / "models/best.pt").is_file() and "on cuda x1 in " in run.stderr
