"""What each latent tells apart besides its main factor: a size latent reads the sprite's area, and with it shape.

A latent's η² for a factor says how much of the code's variance that factor explains; it does
not say what the rest of the code holds. Here the code of each active latent is split by the
classes of its main factor f (the factor of largest η²), and every other factor g is scored
within those classes:

    η²(g | f) = the share of the latent's variance within classes of f that g explains,

ε²-corrected for the number of cells (:func:`explained`), so that a code which ignores g scores
≈ 0 at any sample size. A latent that follows scale and scores η²(shape | scale) ≈ 1 puts the
three shapes of each scale at three distinct codes: it carries shape too, entangled with scale,
where the metrics' per-factor scores look for shape in a latent of its own. Beside it, the
correlation of each code with the sprite's area (its pixel count), one number in which scale
and shape are mixed: at the same scale a square covers more pixels than an ellipse, an ellipse
more than a heart. For the latent that follows the area most closely, the eighteen (scale,
shape) cells are listed in the order of their area with the latent's mean code: cells of nearly
equal mean area (a larger heart and a smaller square) get nearly equal mean codes, so that latent
alone tells them apart only as far as their areas differ image by image (``bcvae decoded-factors
--area-twins`` asks whether the whole code and the decoder do)::

    python -m bcvae within-factors pretrained/factorvae runs/capacity13_cap_cpu-seed0/fold0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import FACTOR_NAMES, FACTOR_SIZES, render_dsprites, sprite_area
from bcvae.data.render import SHAPE_NAMES
from bcvae.encode import make_encode
from bcvae.errors import ArgumentParser
from bcvae.latents import FACTORS, SWITCH_ON_NATS, latent_kl, random_classes

Encode = Callable[[np.ndarray], np.ndarray]
"""uint8 images ``(N, 64, 64)`` -> codes ``(N, D)`` (the posterior means)."""
KL_IMAGES = 2048
"""Images behind each latent's KL (whether it is on)."""


def _column(name: str) -> int:
    return FACTOR_NAMES.index(name)


def explained(z: np.ndarray, labels: np.ndarray, given: np.ndarray | None = None) -> float:
    """ε²: the share of the variance of ``z`` within classes of ``given`` that ``labels`` explain.

    With cells c = (given, labels) and m_c, m_g the means of a cell and of its ``given`` class,
    SS_b = Σ_c n_c (m_c − m_g)², SS_w = Σ_i (z_i − m_c(i))², SS = SS_b + SS_w, and
    ε² = (SS_b − (k − g)·SS_w / (N − k)) / SS for k cells in g classes of ``given``: the plain
    ratio SS_b / SS less what noise alone would give it (k − g degrees of freedom). ``given``
    None is the plain η² of ``labels`` (one class). Clipped to [0, 1]; 0 where ``z`` does not vary
    within the classes of ``given``.

    z : (N,) codes; labels, given : (N,) integer classes.
    """
    z = np.asarray(z, dtype=np.float64)
    given = np.zeros(len(z), dtype=np.int64) if given is None else np.asarray(given)
    _, g_index = np.unique(given, return_inverse=True)
    _, c_index = np.unique(np.stack([given, np.asarray(labels)]), axis=1, return_inverse=True)
    c_index = c_index.reshape(-1)

    def means(index: np.ndarray) -> np.ndarray:
        return (np.bincount(index, weights=z) / np.bincount(index))[index]

    m_cell, m_given = means(c_index), means(g_index)
    ss_b, ss_w = ((m_cell - m_given) ** 2).sum(), ((z - m_cell) ** 2).sum()
    ss = ss_b + ss_w
    if ss <= 1e-12 * max(1.0, (z ** 2).sum()):
        return 0.0
    k, g, n = c_index.max() + 1, g_index.max() + 1, len(z)
    noise = (k - g) * ss_w / (n - k) if n > k else 0.0
    return float(np.clip((ss_b - noise) / ss, 0.0, 1.0))


def latent_rows(codes: np.ndarray, classes: np.ndarray, area: np.ndarray, kl: np.ndarray | None = None,
                threshold_nats: float = SWITCH_ON_NATS) -> list[dict]:
    """One row per latent (only those with KL ≥ ``threshold_nats`` when ``kl`` (D,) is given).

    Each row: ``latent``, ``kl``, ``main`` (the factor of largest η²) and ``eta2`` (every factor's
    η²), ``within`` (η²(g | main) of every other factor g) and ``area_r`` (Pearson correlation of
    the code with the sprite's area; 0 for a constant code).
    codes : (N, D); classes : (N, 6) latent classes; area : (N,) pixels.
    """
    rows = []
    for j in range(codes.shape[1]):
        if kl is not None and kl[j] < threshold_nats:
            continue
        z = codes[:, j]
        eta2 = {FACTOR_NAMES[f]: explained(z, classes[:, f]) for f in FACTORS}
        main = max(eta2, key=eta2.get)
        given = classes[:, _column(main)]
        within = {FACTOR_NAMES[f]: explained(z, classes[:, f], given) for f in FACTORS if FACTOR_NAMES[f] != main}
        varies = z.std() > 0 and area.std() > 0
        rows.append({"latent": j, "kl": None if kl is None else float(kl[j]), "main": main, "eta2": eta2,
                     "within": within, "area_r": float(np.corrcoef(z, area)[0, 1]) if varies else 0.0})
    return rows


def area_cells(z: np.ndarray, classes: np.ndarray, area: np.ndarray) -> list[dict]:
    """The (scale, shape) cells in order of their mean area, with the code's mean and sd in each.

    Each: ``scale`` (class 0–5), ``shape`` (name), ``area`` (mean pixels), ``code`` and ``code_sd``.
    z : (N,) one latent's codes; classes : (N, 6); area : (N,).
    """
    scale, shape = classes[:, _column("scale")], classes[:, _column("shape")]
    cells = []
    for s in range(FACTOR_SIZES[_column("scale")]):
        for h in range(FACTOR_SIZES[_column("shape")]):
            m = (scale == s) & (shape == h)
            if m.any():
                cells.append({"scale": s, "shape": SHAPE_NAMES[h], "area": float(area[m].mean()),
                              "code": float(z[m].mean()), "code_sd": float(z[m].std())})
    return sorted(cells, key=lambda c: c["area"])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two samples without ties: the Pearson correlation of their ranks."""
    ranks = [np.argsort(np.argsort(np.asarray(v))) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def within_factors(encode: Encode, kl: np.ndarray | None, images: int = 20_000, seed: int = 0,
                   render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> dict:
    """:func:`latent_rows` of ``images`` uniform images, and :func:`area_cells` of the active latent
    whose code follows the area most closely (``area_latent``; None without active latents), with
    ``cells_rank_r``, the rank correlation of the cells' mean codes with their mean areas (±1: the
    latent orders the eighteen (scale, shape) cells as their areas do)."""
    classes = random_classes(images, np.random.default_rng(seed))
    pictures = render(classes)
    codes = np.asarray(encode(pictures), dtype=np.float64)
    area = sprite_area(pictures)
    rows = latent_rows(codes, classes, area, kl)
    out = {"images": images, "seed": seed, "latents": rows, "area_latent": None, "area_cells": [],
           "cells_rank_r": None}
    if rows:
        best = max(rows, key=lambda r: abs(r["area_r"]))["latent"]
        cells = area_cells(codes[:, best], classes, area)
        out.update(area_latent=best, area_cells=cells,
                   cells_rank_r=rank_correlation([c["area"] for c in cells], [c["code"] for c in cells]))
    return out


def model_kl(model: torch.nn.Module, images: int = KL_IMAGES, seed: int = 0) -> np.ndarray:
    """KL per latent ``(D,)`` of a model over ``images`` uniform images."""
    classes = random_classes(images, np.random.default_rng(seed + 1))
    x = torch.from_numpy(render_dsprites(classes)).unsqueeze(1).float()
    return np.mean([latent_kl(model, chunk) for chunk in x.split(512)], axis=0)


def markdown(run: str, result: dict) -> str:
    """A run's table: one row per active latent, then the area latent's cells."""
    others = [FACTOR_NAMES[f] for f in FACTORS]
    lines = [f"{run}: {result['images']:,} images (seed {result['seed']}); η²(g | main): the share of the "
             "code's variance within classes of its main factor that g explains",
             "| latent | KL | main (η²) | " + " | ".join(others) + " | r(area) |",
             "|---|---:|---|" + "---:|" * len(others) + "---:|"]
    for r in result["latents"]:
        kl = "" if r["kl"] is None else f"{r['kl']:.2f}"
        cells = [f"{r['within'][g]:.2f}" if g in r["within"] else "–" for g in others]
        lines.append(f"| z{r['latent']} | {kl} | {r['main']} ({r['eta2'][r['main']]:.2f}) | "
                     + " | ".join(cells) + f" | {r['area_r']:.3f} |")
    if result["area_latent"] is not None:
        lines.append(f"z{result['area_latent']} by (scale, shape), in order of area (rank correlation of "
                     f"code and area {result['cells_rank_r']:+.3f}): "
                     + ", ".join(f"{c['scale']}/{c['shape']} {c['area']:.0f} px {c['code']:+.2f}"
                                 for c in result["area_cells"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae within-factors", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (runs/<exp>/fold<k>) or pretrained/<experiment>")
    p.add_argument("--images", type=int, default=20_000, help="images drawn from uniform factors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write every run's result to this JSON file")
    args = p.parse_args(argv)
    if args.images < 100:
        p.error(f"--images must be >= 100, got {args.images}")
    results = {}
    for run in args.runs:
        model, _, _ = load_model(checkpoint_path(Path(run)), torch.device("cpu"))
        encode = make_encode(model, torch.device("cpu"), compile="off")
        results[run] = within_factors(encode, model_kl(model, seed=args.seed), args.images, args.seed)
        print(markdown(run, results[run]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0
