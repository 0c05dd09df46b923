"""Several processes training one model (``torchrun`` + DistributedDataParallel): every use
of ``torch.distributed`` in the package lives here.

Each process holds a share of every global batch (``B/W`` of its ``B`` rows, W = the world
size). Batch-level loss terms (γ·|KL − C|, the β-TCVAE estimators, the FactorVAE
discriminator) are computed by every process on the gathered global tensors
(:func:`gather_rows`), so W processes train what one process trains with the same global
batch. In one process (``WORLD_SIZE`` unset or 1) every function here is the identity or
does nothing, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def start() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def end() -> None:
    """Tear down a torchrun worker's process group (no-op in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_initialized():
        dist.destroy_process_group()


def local_cuda_device(world: int) -> torch.device | None:
    """Under torchrun on a CUDA machine, this process's GPU (``LOCAL_RANK``), made current; else None."""
    if world > 1 and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return None


def wrap(model: nn.Module, world: int) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (which averages its gradients over the
    processes) when there are several; ``model`` itself in one process."""
    return model if world == 1 else DistributedDataParallel(model)


def share(rows, rank: int, world: int):
    """This process's rows of a global batch: ``(B, ...)`` -> ``(B/W, ...)``, the ``rank``-th
    contiguous slice (a tensor or a numpy array; the whole batch in one process)."""
    n = len(rows) // world
    return rows[rank * n:(rank + 1) * n]


class _GatherRows(torch.autograd.Function):
    """All-gather every process's rows ``(b, K)`` into the global batch ``(W·b, K)``, differentiably.

    Every process then evaluates batch-level loss terms on identical global
    tensors, so the gradient reaching its own rows is that of the one-process
    loss. It is scaled by W because DistributedDataParallel averages the
    processes' gradients.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), dist.get_world_size(), rows.shape[0]
        parts = [torch.empty_like(rows) for _ in range(ctx.world)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows] * ctx.world


def gather_rows(parts: tuple[torch.Tensor, ...], world: int) -> tuple[torch.Tensor, ...]:
    """This process's ``(B/W, K_i)`` tensors -> the global batch's ``(B, K_i)``, differentiably
    (the tensors themselves in one process). One all-gather carries them all."""
    if world == 1:
        return parts
    gathered = _GatherRows.apply(torch.cat(parts, dim=1))
    return gathered.split([p.shape[1] for p in parts], dim=1)


def average_gradients(params, world: int) -> None:
    """Replace each parameter's ``.grad`` by its mean over the processes (no-op in one process).

    Used for the FactorVAE discriminator, which is not wrapped in DDP (its loss
    calls it twice per backward). Every process computes the same loss on the
    same gathered codes, so this only keeps the copies identical where
    non-deterministic kernels would let them drift.
    """
    if world == 1:
        return
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= world


def barrier(world: int) -> None:
    """Wait until every process reaches this point (no-op in one process)."""
    if world > 1:
        dist.barrier()


def agree_on_stop(signal_number: int | None, device: torch.device, world: int) -> int | None:
    """The signal any process received (the largest number), or None when none did: all
    processes then stop at the same step. Identity in one process."""
    if world == 1:
        return signal_number
    flag = torch.tensor([signal_number or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def mean_over_ranks(sums: dict, device: torch.device, world: int) -> dict:
    """Accumulated loss terms (scalars or ``(D,)`` tensors) averaged over the processes: the
    global batch's numbers, every process holding an equal share. Identity in one process."""
    if world == 1:
        return sums
    keys = list(sums)  # the same order on every process: the same code filled it
    flat = [torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(-1) for k in keys]
    total = torch.cat(flat)
    dist.all_reduce(total)  # one reduction for every term
    parts = (total / world).split([f.numel() for f in flat])
    return {k: part.reshape(torch.as_tensor(sums[k]).shape) for k, part in zip(keys, parts)}
