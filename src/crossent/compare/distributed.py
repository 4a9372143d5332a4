"""Data-parallel comparison under ``torchrun``: process group set-up and the helpers the
training loop needs.

Launched as ``torchrun --nproc_per_node=N -m crossent compare ...`` every process runs the
whole grid; each training batch is cut into N shards, one per process, and DDP averages the
gradients. The losses are called with ``reduction="global_mean"``, which divides by the
number of valid elements over *all* processes, so the averaged gradient is the gradient of
the whole batch -- the same training as one process, up to floating-point summation order.
Evaluation runs on the full validation and test sets in every process (they are small); the
early-stopping decision is taken from rank 0's numbers so that no process can stop alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from crossent.compare.data import CompareError

__all__ = ["DistInfo", "resolve_device", "setup_distributed", "teardown_distributed"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` (``"cuda:K"``)."""
    text = device.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CompareError(
                f"Expected `--device` to name an available device, but got {device!r} and this "
                f"torch build sees no CUDA GPU. Use `--device cpu`."
            )
        if text == "cuda":
            return torch.device("cuda", local_rank)
        return torch.device(text)
    raise CompareError(f"Expected `--device` to be auto, cpu or cuda, but got {device!r}.")


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU,
    nccl on GPU), or use one the caller already initialised; a single process otherwise."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        dev = resolve_device(device, local_rank)
        return DistInfo(dist.get_rank(), dist.get_world_size(), dev, owns_group=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1 or not dist.is_available():
        return DistInfo(0, 1, dev, owns_group=False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev, owns_group=True)


def teardown_distributed(info: DistInfo) -> None:
    if info.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def broadcast_floats(values: list[float], info: DistInfo) -> list[float]:
    """Rank 0's numbers on every rank (one small broadcast)."""
    if not info.distributed:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def sum_floats(values: list[float], info: DistInfo) -> list[float]:
    """Sum over ranks (one small all-reduce)."""
    if not info.distributed:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()
