"""Several training processes with torchrun (DDP): launching, ranks, and the few collectives we need.

With one process every helper here is a no-op, so the trainer has one code path.
"""

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import hardware
from .config import Params, cpu_threads
from .errors import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_with_torchrun(nproc_per_node: int, script: str, args: list[str]) -> None:
    """Replace this process with `torchrun` running `script` on nproc_per_node processes (this node only).

    For several nodes, start torchrun yourself on each node (see docs/gpu.md).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
           "--no-python", sys.executable, script, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def init(device_type: str) -> Ranks:
    """Join the process group when started by torchrun; NCCL on CUDA, gloo on CPU."""
    if not under_torchrun():
        return Ranks()
    ranks = Ranks(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]),
                  world_size=int(os.environ["WORLD_SIZE"]))
    if device_type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return ranks


def wrap(module, ranks: Ranks, device: torch.device):
    """`module` under DDP when there are several ranks (on its rank's GPU, or the CPU); itself otherwise."""
    if not ranks.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[ranks.local_rank] if device.type == "cuda" else None)


def share(items: list, ranks: Ranks) -> list:
    """This rank's equal, contiguous share of `items` (e.g. a step's micro-batches)."""
    per_rank = len(items) // ranks.world_size
    return items[ranks.rank * per_rank:][:per_rank]


def share_hardware(hw: hardware.Hardware, ranks: Ranks, params: Params) -> hardware.Hardware:
    """This rank's device (its own GPU; on CPU, its share of the cores), and the malloc tuning on CPU."""
    if params.train.grad_accum_steps % ranks.world_size:
        raise UserError(f"train.grad_accum_steps ({params.train.grad_accum_steps}) must be divisible by the number of "
                        f"processes ({ranks.world_size}); each process takes an equal share of the micro-batches")
    if ranks.enabled and hw.device_type == "cuda":
        hw = dataclasses.replace(hw, device=torch.device("cuda", ranks.local_rank))
    elif ranks.enabled:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
        torch.set_num_threads(max(1, cpu_threads(params.hardware.threads) // local))
    if hw.device_type == "cpu":
        hardware.keep_freed_memory()
    return hw


def shutdown(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Average a scalar tensor over ranks."""
    if ranks.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ranks.world_size
    return value


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when the flag is set on at least one (so all stop at the same step)."""
    if not ranks.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj, ranks: Ranks) -> list:
    """Every rank's `obj` (a picklable value), on every rank."""
    if not ranks.enabled:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out
