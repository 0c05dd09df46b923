"""The committed ``pretrained/<experiment>`` models: intact (``sha256sum -c``), small, trained
(they reconstruct far below the mean-image plateau), and drawn by ``bcvae plots`` without training.
The notebooks run against them in ``test_notebooks.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bcvae import plots, reproduce
from bcvae.checkpoint import PRETRAINED_MAX_BYTES, load_model
from bcvae.data.render import all_latents_classes, render_dsprites
from bcvae.losses import recon_nll
from conftest import COMMITTED_PRETRAINED as COMMITTED
from conftest import ROOT

# The experiments of the full-length table: its default ones and those whose rows were added to it
EXPERIMENTS = {*reproduce.EXPERIMENTS["full"],
               *(r["experiment"] for r in json.loads((ROOT / "results" / "full.json").read_text()))}
# Every objective starts on a plateau where the decoder draws the mean image, at ≈ 565 nats
# per image (README, Results); a model of the same data that uses its latents sits far below.
PLATEAU_NLL = 565.0


def test_the_readme_lists_every_committed_model():
    readme = (ROOT / "README.md").read_text()
    for d in COMMITTED:
        assert f"pretrained/{d.name}" in readme, d.name
        assert d.name in EXPERIMENTS, f"{d}: not an experiment of the full-length table"


def files_to_commit(d: Path) -> set[str]:
    """The files of ``d`` that git tracks or would add (ignored ones, such as the
    ``eval_rerun.json`` of ``bcvae eval pretrained/...``, are not); every file outside a checkout."""
    proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."],
                          cwd=d, capture_output=True, text=True)
    if proc.returncode != 0:
        return {p.name for p in d.iterdir()}
    return set(proc.stdout.split())


@pytest.mark.parametrize("d", COMMITTED, ids=lambda d: d.name)
def test_every_file_matches_its_recorded_sum_and_is_small(d):
    proc = subprocess.run(["sha256sum", "--check", "--strict", "sha256"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {line.split("  ", 1)[1] for line in (d / "sha256").read_text().splitlines()}
    files = files_to_commit(d)
    assert listed | {"sha256"} == files, "a file without a recorded sum"
    for name in files:
        assert (d / name).stat().st_size < PRETRAINED_MAX_BYTES, f"{d / name}: {(d / name).stat().st_size} bytes"


@pytest.mark.parametrize("d", COMMITTED, ids=lambda d: d.name)
def test_the_weights_are_a_trained_model_of_the_recorded_run(d):
    model, cfg, ckpt = load_model(d)
    info = json.loads((d / "info.json").read_text())
    result = json.loads((d / "eval.json").read_text())
    assert ckpt["step"] == info["step"] == result["step"] and cfg.name == d.name
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())
    rng = np.random.default_rng(0)
    classes = all_latents_classes()[rng.choice(737_280, 256, replace=False)]
    x = torch.from_numpy(render_dsprites(classes).astype(np.float32)).unsqueeze(1)
    with torch.no_grad():
        mu, _ = model.encode(x)
        nll = recon_nll(model.decode(mu), x).item()
    assert nll < PLATEAU_NLL / 2, f"{d.name}: reconstruction NLL {nll:.1f} nats, near the plateau"


@pytest.mark.parametrize("d", COMMITTED, ids=lambda d: d.name)
def test_plots_draw_a_committed_model(d, tmp_path):
    copy = tmp_path / d.name
    shutil.copytree(d, copy)
    names = {p.name for p in plots.write_run_plots(copy, images_per_factor=256)}
    assert {"traversals.png", "information.png", "kl_emergence.png"} <= names
    check = subprocess.run(["sha256sum", "--check", "--strict", "sha256"], cwd=copy, capture_output=True, text=True)
    assert check.returncode == 0, "drawing must not change the model's files: " + check.stdout
