"""What each latent encodes, as numbers: from a run's log (KL per latent, the order in
which latents switch on) and from its encoder (which dSprites factor each latent follows).

The figures drawing these live in :mod:`bcvae.viz`; :mod:`bcvae.reproduce` records them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from bcvae.data import FACTOR_NAMES, FACTOR_SIZES, render_dsprites
from bcvae.losses import conditional_warm_start, kl_per_dim
from bcvae.track import is_number

SWITCH_ON_NATS = math.log(2.0)
"""A latent counts as switched on once its KL reaches one bit (ln 2 ≈ 0.693 nats).

The data-averaged KL of latent j, E_x KL(q(z_j|x) ‖ N(0, 1)), is an upper bound
on the information z_j carries about the image, I(x; z_j) (Hoffman & Johnson
2016, "ELBO surgery"). Below one bit the latent cannot even tell two kinds of
image apart; a collapsed latent sits at ~0, and each latent encoding a dSprites
factor carries several nats at the end of training (Burgess et al. 2018, fig. 3).
"""

# dSprites factors a model can encode: colour has a single value.
FACTORS = tuple(i for i, size in enumerate(FACTOR_SIZES) if size > 1)

FACTOR_IMAGES = 2048
"""Images per factor in :func:`factor_codes`, spread evenly over the factor's values (10,277 in all).

The error of an η² estimate from a stratified sample is set by the images per factor N, not by
the number of values: about 2·sqrt(η²(1 − η²)/N) (rms, Gaussian codes), ≤ 0.022 here. Shape,
with three values, got 96 images when every value had 32: a code whose variance shape explains
15 % (the size latents of the trained models) read 0.15 ± 0.08, and re-encoding the five
``pretrained/`` models with three sample seeds moved η²(shape) by up to 0.10. At 2,048 per
factor the same five models, three seeds, 50 latent-factor pairs each, stay within 0.045 of
an 8,192-image estimate (shape ≤ 0.022); about 5 s per model on one CPU thread.
"""


# ================================================================ KL per latent: from a run's log, or its encoder

def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of every row that has ``key``."""
    pairs = [(r["step"], r[key]) for r in rows if is_number(r.get(key))]
    steps, values = zip(*pairs) if pairs else ((), ())
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def n_latents(rows: Sequence[dict], split: str = "train") -> int:
    """Number of latents logged as ``<split>/kl_dim/<i>``."""
    prefix = f"{split}/kl_dim/"
    return max((int(k[len(prefix):]) + 1 for r in rows for k in r if k.startswith(prefix)), default=0)


def last_kl_per_latent(rows: Sequence[dict], split: str = "val") -> np.ndarray | None:
    """KL per latent ``(D,)`` in nats from the last row that logged ``<split>/kl_dim/*``."""
    d = n_latents(rows, split)
    for row in reversed(rows):
        if f"{split}/kl_dim/0" in row:
            return np.array([row.get(f"{split}/kl_dim/{i}", np.nan) for i in range(d)])
    return None


def switch_on_order(rows: Sequence[dict], threshold_nats: float = SWITCH_ON_NATS,
                    split: str = "train", after_step: int = 0) -> list[tuple[int, int]]:
    """The order in which latents switched on: ``[(latent, step), ...]`` by step.

    A latent switches on at the first logged step after ``after_step`` where its KL
    (``<split>/kl_dim/<i>``, each training row already an average over the
    logging interval) reaches ``threshold_nats`` (default one bit, see
    :data:`SWITCH_ON_NATS`). Latents that never do are left out; latents that
    switch on at the same logged step are ordered by their KL there, largest first.
    ``after_step`` skips a warm start (see :func:`objective_start`), where every latent carries KL.
    """
    rows = sorted((r for r in rows if r["step"] > after_step), key=lambda r: r["step"])
    found = []
    for i in range(n_latents(rows, split)):
        steps, kl = series(rows, f"{split}/kl_dim/{i}")
        above = np.flatnonzero(kl >= threshold_nats)
        if len(above):
            found.append((int(steps[above[0]]), -float(kl[above[0]]), i))
    return [(i, step) for step, _, i in sorted(found)]


def objective_start(loss_cfg, rows: Sequence[dict] = ()) -> int:
    """First step of the configured objective proper: after the capacity objective's β = 1 warm
    start and γ warm-up (``loss.warm_start_steps + loss.gamma_warmup_steps``), else 0.

    A conditional warm start (``loss.warm_start_until_mi``) ends at a step the training log
    records (``train/warm_start_end`` in ``rows``); while it has not ended, the objective proper
    has not begun: the last logged step is returned, so no latent counts as switched on.
    """
    if loss_cfg.objective != "capacity":
        return 0
    if not conditional_warm_start(loss_cfg):
        return loss_cfg.warm_start_steps + loss_cfg.gamma_warmup_steps
    ended = [r["train/warm_start_end"] for r in rows if "train/warm_start_end" in r]
    if ended:
        return int(ended[0]) + loss_cfg.gamma_warmup_steps
    return max((int(r["step"]) for r in rows), default=loss_cfg.warm_start_steps + loss_cfg.gamma_warmup_steps)


def switch_on_summary(rows: Sequence[dict], loss_cfg) -> dict:
    """The switch-on order as recorded in results rows and ``latents.json``: counted from the
    objective proper (a warm start's KL is not a latent switching on).

    ``{"switch_on_after": step, "switch_on_order": [{"latent": i, "step": s}, ...]}``.
    """
    after = objective_start(loss_cfg, rows)
    return {"switch_on_after": after,
            "switch_on_order": [{"latent": i, "step": s} for i, s in switch_on_order(rows, after_step=after)]}


def order_by_kl(kl: np.ndarray) -> list[int]:
    """Latent indices, most informative (largest KL) first."""
    return [int(i) for i in np.argsort(-np.nan_to_num(np.asarray(kl, np.float64), nan=-np.inf), kind="stable")]


@torch.no_grad()
def latent_kl(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """KL per latent ``(D,)`` in nats of images ``x`` ``(B, 1, 64, 64)`` (when no log has it)."""
    mu, logvar = model.encode(x)
    return kl_per_dim(mu.float(), logvar.float()).cpu().numpy().astype(np.float64)


# ================================================================ which latent encodes which factor

def random_classes(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform latent-class tuples ``(n, 6)`` int64, drawn one factor (column) after the other.

    The same distribution as :func:`bcvae.metrics.sample_factors`, another draw order: the
    pictures and tables drawn so far keep their images.
    """
    return np.stack([rng.integers(0, size, n) for size in FACTOR_SIZES], axis=1)


def factor_codes(encode: Callable[[np.ndarray], np.ndarray], *,
                 render: Callable[[np.ndarray], np.ndarray] = render_dsprites,
                 images_per_factor: int = FACTOR_IMAGES, seed: int = 0) -> dict[str, np.ndarray]:
    """Codes of images with one factor fixed at each of its values, the others random.

    For every factor f with more than one value (shape, scale, orientation,
    posX, posY) and every value v of f, n_f = ⌈images_per_factor / V_f⌉ images
    are rendered with f = v and the other factors drawn uniformly, then encoded.

    Parameters
    ----------
    encode : images ``(N, 64, 64)`` uint8 -> codes ``(N, D)`` (e.g. the encoder mean,
        :func:`bcvae.encode.make_encode`).
    render : latents_classes ``(N, 6)`` int -> images ``(N, 64, 64)``.

    Returns
    -------
    ``{factor name: codes (V_f, n_f, D)}``. Averaging axis 1 gives the
    mean code as the factor varies, marginalising the other factors.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for f in FACTORS:
        n_f = per_value(images_per_factor, f)
        classes = random_classes(FACTOR_SIZES[f] * n_f, rng)
        classes[:, f] = np.repeat(np.arange(FACTOR_SIZES[f]), n_f)
        codes = np.asarray(encode(render(classes)), dtype=np.float64)
        out[FACTOR_NAMES[f]] = codes.reshape(FACTOR_SIZES[f], n_f, -1)
    return out


def per_value(images_per_factor: int, factor: int) -> int:
    """Images per value of ``factor`` (a column of the latent classes) in :func:`factor_codes`."""
    return -(-images_per_factor // FACTOR_SIZES[factor])


def factor_scores(codes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fraction of each latent's variance explained by each factor, ``{factor: (D,)}`` in [0, 1].

    The correlation ratio η² = Var_v(E[z_j | f = v]) / Var(z_j), with the
    between-value variance corrected for the noise of averaging
    n samples each (E[Var_v(mean)] = Var_v(E) + E[within]/n). The
    dSprites factors are independent and uniform, so each factor's stratified
    sample is also a uniform sample of the data set and gives Var(z_j).
    """
    scores = {}
    for name, c in codes.items():
        n = c.shape[1]
        between = c.mean(axis=1).var(axis=0)
        within = c.var(axis=1, ddof=1).mean(axis=0) if n > 1 else np.zeros(c.shape[2])
        flat = c.reshape(-1, c.shape[2])
        total = flat.var(axis=0)
        # A constant code (variance below float32 resolution) is explained by nothing.
        varies = total > (1e-6 * (1.0 + np.abs(flat.mean(axis=0)))) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            eta2 = np.where(varies, (between - within / n) / total, 0.0)
        scores[name] = np.clip(eta2, 0.0, 1.0)
    return scores


def factor_table(codes: dict[str, np.ndarray], kl: np.ndarray | None = None,
                 threshold_nats: float = SWITCH_ON_NATS) -> list[dict]:
    """One row per latent: the factor it varies most with, from :func:`factor_codes`.

    Each row: ``latent``, ``factor`` (name), ``score`` (its η², the fraction of
    the latent's variance that factor explains), ``scores`` (every factor),
    ``code_std`` (spread of the code over the data; ~0 for a collapsed latent)
    and, when ``kl`` (D,) nats is given, ``kl`` and ``active`` (kl ≥ threshold).
    Rows are sorted by KL (largest first) when ``kl`` is given, else by latent.
    A collapsed latent still gets an argmax factor: read ``active`` first.
    """
    scores = factor_scores(codes)
    names = list(scores)
    matrix = np.stack([scores[n] for n in names])  # (F, D)
    std = np.sqrt(np.mean([c.reshape(-1, c.shape[2]).var(axis=0) for c in codes.values()], axis=0))
    rows = []
    for j in range(matrix.shape[1]):
        best = int(np.argmax(matrix[:, j]))
        row = {"latent": j, "factor": names[best], "score": float(matrix[best, j]),
               "scores": {n: float(matrix[k, j]) for k, n in enumerate(names)}, "code_std": float(std[j])}
        if kl is not None:
            row.update(kl=float(kl[j]), active=bool(kl[j] >= threshold_nats))
        rows.append(row)
    if kl is not None:
        rows.sort(key=lambda r: -r["kl"])
    return rows


def latent_factor_table(encode: Callable[[np.ndarray], np.ndarray], *,
                        render: Callable[[np.ndarray], np.ndarray] = render_dsprites,
                        images_per_factor: int = FACTOR_IMAGES, seed: int = 0, kl: np.ndarray | None = None,
                        threshold_nats: float = SWITCH_ON_NATS) -> list[dict]:
    """Latent -> the dSprites factor it encodes, with a normalised score (η² in [0, 1]).

    :func:`factor_codes` then :func:`factor_table`; see those for the arguments.
    """
    codes = factor_codes(encode, render=render, images_per_factor=images_per_factor, seed=seed)
    return factor_table(codes, kl, threshold_nats)
