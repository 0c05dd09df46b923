"""``bcvae plots RUN``: load a trained run from disk and write every figure of it.

A run's checkpoint, its logged history (JSON lines or the W&B record) and a fixed
sample of its held-out images make a :class:`Run`; :func:`write_run_plots` draws the
figures of :mod:`bcvae.viz` from it and records the latent -> factor table of
:mod:`bcvae.latents`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import cache_path, load_split, render_dsprites
from bcvae.encode import make_encode
from bcvae.latents import (
    FACTOR_IMAGES,
    SWITCH_ON_NATS,
    factor_codes,
    factor_table,
    last_kl_per_latent,
    latent_kl,
    order_by_kl,
    random_classes,
    switch_on_summary,
)
from bcvae.track import load_history
from bcvae.viz import (
    display_sample,
    information_figure,
    kl_emergence_figure,
    latent_factor_figure,
    loss_curves_figure,
    reconstruction_figure,
    traversal_figure,
    traversal_frames,
    write_traversal_gif,
)

if TYPE_CHECKING:
    from bcvae.config import Config

log = logging.getLogger("bcvae")


@dataclass
class Run:
    """A trained run loaded for plotting.

    Attributes
    ----------
    dir : ``runs/<exp>/fold<k>``
    model : the VAE in eval mode; cfg : its config; ckpt : the checkpoint dict
    rows : logged scalars merged by step (:func:`bcvae.track.load_history`)
    images : ``(N, 1, 64, 64)`` float held-out images on the model's device
    images_from : where ``images`` came from (the validation fold, or rendered)
    """

    dir: Path
    model: torch.nn.Module
    cfg: Config
    ckpt: dict
    rows: list[dict]
    images: torch.Tensor
    images_from: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def kl(self) -> np.ndarray:
        """KL per latent ``(D,)`` nats: the last validation log, else computed on :attr:`images`."""
        kl = last_kl_per_latent(self.rows, "val")
        return kl if kl is not None else latent_kl(self.model, self.images)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``(N, 64, 64)`` -> encoder means ``(N, D)``."""
        return make_encode(self.model, self.device, batch_size=512)(images)


def load_run(run_dir: Path, n_images: int = 256, history: str = "auto") -> Run:
    """Load ``run_dir``'s checkpoint, logged history and ``n_images`` held-out images.

    Images are the first ``n_images`` of the run's validation fold when its fold
    cache exists (never training data); otherwise (cache moved or deleted) they
    are rendered procedurally from a seeded sample of factors.
    """
    run_dir = Path(run_dir)
    model, cfg, ckpt = load_model(checkpoint_path(run_dir))
    rows = load_history(run_dir, history)
    device = next(model.parameters()).device
    images, source = _held_out_images(cfg, n_images)
    x = torch.from_numpy(images).to(device).unsqueeze(1).float()
    return Run(run_dir, model, cfg, ckpt, rows, x, source)


def _held_out_images(cfg: Config, n: int) -> tuple[np.ndarray, str]:
    """``(n, 64, 64)`` uint8 images of the validation fold, or rendered ones without a cache."""
    if cache_path(cfg.data).exists():
        val = load_split(cfg.data).val
        shown = display_sample(val.factors, min(n, len(val)), seed=cfg.seed)
        return val.images(shown), f"validation fold {cfg.data.fold}"
    classes = random_classes(n, np.random.default_rng(cfg.seed))
    log.info("no fold cache at %s: plotting procedurally rendered images", cache_path(cfg.data))
    return render_dsprites(classes), "rendered (no fold cache)"


def write_run_plots(run_dir: Path, images_per_factor: int = FACTOR_IMAGES) -> list[Path]:
    """Write every figure of a run as PNG under ``run_dir/plots/`` (``bcvae plots RUN``).

    Files: ``reconstructions.png``, ``traversals.png``, ``traversals.gif``,
    ``kl_emergence.png``, ``loss_curves.png``, ``information.png``, ``latent_factors.png``, and
    ``latents.json`` (the latent -> factor table and the switch-on order).
    Returns the paths written.
    """
    tic = time.perf_counter()
    run = load_run(run_dir)
    log.info("loaded %s (step %d) in %.1f s", run_dir, run.ckpt["step"], time.perf_counter() - tic)
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    kl = run.kl()
    tic = time.perf_counter()
    codes = factor_codes(run.encode, images_per_factor=images_per_factor, seed=run.cfg.seed)
    log.info("rendered and encoded the factor sweeps in %.1f s; drawing the figures", time.perf_counter() - tic)
    figures = {
        "reconstructions": reconstruction_figure(run.model, run.images[:8]),
        "traversals": traversal_figure(run.model, run.images[:1], kl),
        "kl_emergence": kl_emergence_figure(run.rows),
        "loss_curves": loss_curves_figure(run.rows),
        "information": information_figure(run.rows),
        "latent_factors": latent_factor_figure(codes, kl),
    }
    paths = []
    for name, fig in figures.items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
    frames = traversal_frames(run.model, run.images[:1], order_by_kl(kl), np.linspace(-3, 3, 13))
    paths.append(write_traversal_gif(frames, out / "traversals.gif"))
    paths.append(out / "latents.json")
    summary = {"step": run.ckpt["step"], "images": run.images_from, "switch_on_nats": SWITCH_ON_NATS,
               **switch_on_summary(run.rows, run.cfg.loss), "factor_table": factor_table(codes, kl)}
    paths[-1].write_text(json.dumps(summary, indent=2) + "\n")
    return paths
