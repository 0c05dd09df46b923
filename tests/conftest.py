"""Shared test set-up: never touch the network; one smoke run per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The committed pretrained/<experiment> directories (tests/test_pretrained_committed.py, test_notebooks.py).
COMMITTED_PRETRAINED = sorted(p.parent for p in (ROOT / "pretrained").glob("*/sha256"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/wandb_records.py

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)


def params(run_dir: Path) -> dict:
    """The model parameters of a run's checkpoint."""
    from bcvae import checkpoint

    return checkpoint.load_checkpoint(Path(run_dir) / "checkpoint.pt")["model"]


def assert_same_params(a: dict, b: dict) -> None:
    """Bit-for-bit equal parameters (exact resume on CPU)."""
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"parameter {key} differs from the uninterrupted run"


def smoke_overrides(tmp: Path) -> list[str]:
    """Overrides that keep a smoke run inside ``tmp`` (runs, W&B and data cache)."""
    return [f"run_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'data'}", "log.progress=false"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A finished ``experiments/smoke.yaml`` run; returns its run directory."""
    from bcvae import config, train

    tmp = tmp_path_factory.mktemp("smoke")
    cfg = config.load(ROOT / "experiments" / "smoke.yaml", smoke_overrides(tmp))
    train.train(cfg)
    return train.run_dir_for(cfg)
