"""Measurement helpers for ``benchmarks/run.py``: interleaved timing, matmul peak, FLOPs, memory.

The machine may be shared with other work. Every comparison therefore runs its
variants in turns (A, B, C, A, B, C, ...) and reports the median over turns, so
a burst of load from elsewhere hits every variant alike and ratios stay fair.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

Step = Callable[[], int]  # runs one unit of work and returns the number of images it processed


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and its core count."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def sync() -> None:
    """Wait for queued CUDA work, so wall time covers it (no-op on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_call_seconds(step: Step) -> float:
    """Wall time of the first call (for a compiled step: the compilation)."""
    tic = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - tic


def interleaved(variants: dict[str, Step], rounds: int, seconds: float) -> dict[str, dict]:
    """Images/s of each variant: ``rounds`` turns each, a turn repeating the step for ``seconds``.

    Returns ``{name: {"median": img/s, "rounds": [img/s, ...]}}``.
    """
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            images, tic = 0, time.perf_counter()
            while True:
                images += step()
                sync()
                elapsed = time.perf_counter() - tic
                if elapsed >= seconds:
                    break
            rates[name].append(images / elapsed)
    return {name: {"median": statistics.median(r), "rounds": [round(v, 1) for v in r]} for name, r in rates.items()}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best float32 ``n × n`` matmul rate in GFLOP/s: this machine's practical peak right now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 2 * n**3 / best / 1e9


def train_flops_per_image(arch: str, z_dim: int, batch: int = 8) -> float:
    """FLOPs of one training image (forward, loss, backward), counted by torch's FlopCounterMode.

    Counts matmuls and convolutions (what the counter knows); element-wise work
    (ReLU, the loss, Adam) is left out, as is usual for achieved-FLOP/s figures.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from bcvae.config import LossConfig
    from bcvae.losses import vae_loss
    from bcvae.model import VAE

    model = VAE(z_dim, arch)
    x = (torch.rand(batch, 1, 64, 64) > 0.5).float()
    with FlopCounterMode(display=False) as counter:
        logits, mu, logvar, z = model(x)
        loss, _ = vae_loss(LossConfig(), x, logits, mu, logvar, z, 0)
        loss.backward()
    return counter.get_total_flops() / batch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux's ``VmHWM`` where available: ``ru_maxrss`` survives ``execve``, so a child
    started by a large parent would report the parent's peak as its own.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; bytes on macOS
