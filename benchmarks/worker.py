"""Measurements that need a process of their own; ``benchmarks/run.py`` starts them.

``ddp``: run under ``torchrun --nproc_per_node=W``; times the trainer's step with
W processes (a fixed number of steps per round: the processes must agree on it).
``rss``: trains a few steps on the full dataset and reports this process's peak
resident memory, which must not include the parent's.
``step``: times the fast training step in a fresh process, under the OpenMP
settings of its environment (they are read once, when torch loads).
Each prints one JSON line on stdout (rank 0 only for ``ddp``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import first_call_seconds, interleaved, peak_rss_mb  # noqa: E402
from training import TrainerSteps, bench_config  # noqa: E402

from bcvae import distributed  # noqa: E402


def ddp(args: argparse.Namespace) -> dict:
    steps = TrainerSteps(bench_config("burgess", 10, args.batch, args.cache_dir, args.subset,
                                      compile=args.compile, threads=1, amp=args.amp))
    first = first_call_seconds(steps)
    for _ in range(2):
        steps()
    rates = []
    for _ in range(args.rounds):
        distributed.barrier(steps.trainer.world)
        tic = time.perf_counter()
        for _ in range(args.steps):
            steps()
        rates.append(args.steps * args.batch / (time.perf_counter() - tic))  # global images per second
    return {"median": statistics.median(rates), "rounds": [round(r, 1) for r in rates],
            "first_step_s": first, "compiled": steps.compiled, "world": steps.trainer.world,
            "rank": steps.trainer.rank}


def step(args: argparse.Namespace) -> dict:
    """The fast training step alone, in a fresh process (whose OpenMP settings the caller chose)."""
    steps = TrainerSteps(bench_config("burgess", 10, args.batch, args.cache_dir, args.subset, compile=args.compile))
    first_call_seconds(steps)
    rates = interleaved({"fast": steps}, args.rounds, args.seconds)["fast"]
    return {**rates, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}


def rss(args: argparse.Namespace) -> dict:
    tic = time.perf_counter()
    steps = TrainerSteps(bench_config("burgess", 10, args.batch, args.cache_dir, 0, compile=args.compile))
    loaded = time.perf_counter() - tic
    for _ in range(args.steps):
        steps()
    return {"rss_mb": peak_rss_mb(), "load_s": loaded, "train_images": len(steps.trainer.split.train),
            "steps": args.steps, "compiled": steps.compiled}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("ddp", "rss", "step"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--subset", type=int, default=20_000)
    p.add_argument("--compile", default="auto")
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--amp", default="auto", help="train.amp: auto (float32 on a CPU) or bf16")
    args = p.parse_args()
    result = {"ddp": ddp, "rss": rss, "step": step}[args.what](args)
    if result.pop("rank", 0) == 0:
        print(json.dumps(result), flush=True)
    distributed.end()


if __name__ == "__main__":
    main()
