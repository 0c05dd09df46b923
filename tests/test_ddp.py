"""Multi-process training: ``torchrun --nproc_per_node=2 -m bcvae train`` (gloo on CPU) computes
what one process computes with the same global batch, and only rank 0 writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bcvae import train
from bcvae.checkpoint import load_checkpoint
from conftest import ROOT, smoke_overrides

pytestmark = pytest.mark.slow  # each case starts several interpreters (≈30 s on 2 cores)


def launch(tmp: Path, processes: int, *overrides: str, wait: bool = True):
    """``bcvae train smoke`` in 1 process or under torchrun with ``processes`` processes (gloo)."""
    cmd = [sys.executable, "-m", "bcvae", "train", "smoke"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "bcvae", "train", "smoke"]
    cmd += smoke_overrides(tmp) + ["eval.at_end=false", "train.threads=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return tmp / "runs" / "smoke" / "fold0"


def checkpoint(run: Path) -> dict:
    return load_checkpoint(run / "checkpoint.pt")


def assert_same_state(a: dict, b: dict, atol: float = 2e-5) -> None:
    for part in ("model", "disc"):
        if a[part] is None:
            assert b[part] is None
            continue
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=1e-4, atol=atol, msg=f"{part}.{key}")


def logged(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in train.track.read_jsonl(run / "metrics.jsonl") if key in r]


@pytest.mark.parametrize("objective", ["capacity", "factor", "factor-centred"])
def test_two_processes_train_like_one(tmp_path, objective):
    # factor-centred: both the VAE's TC term and D centre the gathered global batch, as one process does
    loss = ["loss.objective=factor", "loss.disc_centre=true"] if objective == "factor-centred" \
        else [f"loss.objective={objective}"]
    budget = [*loss, "train.max_steps=12", "train.batch_size=32", "log.every_train=2",
              "train.steps_per_epoch=6"]  # two epochs: validation and a checkpoint in between
    one = launch(tmp_path / "one", 1, *budget)
    two = launch(tmp_path / "two", 2, *budget)
    a, b = checkpoint(one), checkpoint(two)
    assert a["step"] == b["step"] == 12
    assert_same_state(a, b)
    # rank 0 logs the loss of the global batch (averaged over processes), once per step
    for key in ("train/loss", "train/kl", "val/loss"):
        steps_a, values_a = zip(*logged(one, key))
        steps_b, values_b = zip(*logged(two, key))
        assert steps_a == steps_b
        assert values_b == pytest.approx(values_a, rel=1e-4), key
    assert len(list((two / "wandb").glob("offline-run-*"))) == 1  # one W&B run: rank 0's


def test_sigterm_stops_every_process_at_one_step_and_resumes(tmp_path):
    overrides = ["train.max_steps=400", "train.epochs=100", "train.batch_size=32", "log.every_train=5"]
    proc = launch(tmp_path / "two", 2, *overrides, wait=False)
    run = tmp_path / "two" / "runs" / "smoke" / "fold0"
    deadline = time.monotonic() + 300
    while not any(step >= 10 for step, _ in logged_or_empty(run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    out, _ = proc.communicate(timeout=300)
    stopped = checkpoint(run)["step"]
    assert 10 <= stopped < 400 and stopped % 5 == 0, out[-3000:]  # processes agree at logging steps
    launch(tmp_path / "two", 2, *overrides[1:], f"train.max_steps={stopped + 10}")
    uninterrupted = launch(tmp_path / "one", 1, *overrides[1:], f"train.max_steps={stopped + 10}")
    assert_same_state(checkpoint(run), checkpoint(uninterrupted))


def logged_or_empty(run: Path) -> list[tuple[int, float]]:
    return logged(run, "train/loss") if (run / "metrics.jsonl").exists() else []
