"""The FactorVAE score (Kim & Mnih 2018): a majority vote of least-variable dimensions."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bcvae.data.render import render_dsprites
from bcvae.metrics._codes import (
    DEFAULT_FACTORS, CodeSource, Encode, Render, code_source, factor_columns, sample_factors,
)


NEAR_THRESHOLD = 2.0
"""A dimension whose code sd is below this multiple of the pruning threshold is named in the
details' note when it wins votes: the score then depends on where the threshold lies."""


def _factor_vae_votes(source: CodeSource, rng: np.random.Generator, cols: np.ndarray, n: int, batch_size: int,
                      scale: np.ndarray) -> np.ndarray:
    """Vote counts ``(K, D_active)``: how often fixing factor k left active dimension d least variable.

    Per vote: one factor fixed to one random value across ``batch_size``
    images (Kim & Mnih 2018, Sec. 4); variances (ddof 1) divided by the global
    ones, argmin over active dimensions.
    """
    labels = rng.integers(len(cols), size=n)
    classes = sample_factors(n * batch_size, rng).reshape(n, batch_size, -1)
    rows, fixed = np.arange(n), cols[labels]
    classes[rows, :, fixed] = classes[rows, 0, fixed][:, None]
    local = source(classes).var(axis=1, ddof=1)  # (n, D)
    least = np.argmin(local[:, scale > 0] / scale[scale > 0] ** 2, axis=1)
    votes = np.zeros((len(cols), int((scale > 0).sum())), dtype=np.int64)
    np.add.at(votes, (labels, least), 1)
    return votes


def factor_vae_details(encode: Encode | CodeSource | None, seed: int = 0, *, batch_size: int = 64,
                       num_train: int = 10_000, num_eval: int = 5_000, num_variance_estimate: int = 10_000,
                       prune_threshold: float = 0.05, factors: Sequence[str] = DEFAULT_FACTORS,
                       render: Render = render_dsprites, codes_table: np.ndarray | None = None) -> dict:
    """:func:`factor_vae_score` with details: eval/train accuracy, active dimensions, notes."""
    source, rng, cols = code_source(encode, render, codes_table), np.random.default_rng(seed), factor_columns(factors)
    global_var = source(sample_factors(num_variance_estimate, rng)).var(axis=0, ddof=1)
    # disentanglement_lib prunes on the standard deviation: active <=> sqrt(var) >= threshold.
    active = (np.sqrt(global_var) >= prune_threshold) & (global_var > 0)
    out = {"num_active_dims": int(active.sum()), "active_dims": np.flatnonzero(active).tolist()}
    if not active.any():
        note = f"no code dimension has standard deviation >= {prune_threshold}: score 0 as in disentanglement_lib"
        return {**out, "eval_accuracy": 0.0, "train_accuracy": 0.0, "note": note}
    scale = np.where(active, np.sqrt(global_var), 0.0)
    train_votes = _factor_vae_votes(source, rng, cols, num_train, batch_size, scale)
    classifier = np.argmax(train_votes, axis=0)  # majority factor of each active dimension
    eval_votes = _factor_vae_votes(source, rng, cols, num_eval, batch_size, scale)
    dims = np.arange(train_votes.shape[1])
    right = eval_votes[classifier, dims]  # (D_active,) eval votes each dimension gets right
    out["train_accuracy"] = float(train_votes[classifier, dims].sum() / train_votes.sum())
    out["eval_accuracy"] = float(right.sum() / eval_votes.sum())
    out["classifier"] = [factors[k] for k in classifier]  # the factor each active dimension votes for
    out["train_votes"], out["eval_votes"] = train_votes.tolist(), eval_votes.tolist()  # (K, D_active)
    out["eval_accuracy_per_factor"] = _accuracy_per_factor(eval_votes, classifier, factors)
    # Which dimensions the score's points come from, and how far each sits above the pruning
    # threshold: a dimension whose code barely varies can still win a factor's votes when no
    # other dimension holds that factor, and pruning it (a slightly higher threshold) would
    # move those points.
    sd = scale[active]
    points = 100 * right / eval_votes.sum()
    out["active_sd"], out["points_per_dim"] = sd.tolist(), points.tolist()
    near = (sd < NEAR_THRESHOLD * prune_threshold) & (points > 0)
    if near.any():
        listed = ", ".join(f"{d} (sd {s:.3f}, {p:.1f})" for d, s, p in
                           zip(np.flatnonzero(active)[near], sd[near], points[near]))
        out["note"] = (f"{points[near].sum():.1f} points of the score come from dimensions whose code sd is "
                       f"below {NEAR_THRESHOLD:g} x the pruning threshold {prune_threshold:g}: {listed}")
    return out


def _accuracy_per_factor(votes: np.ndarray, classifier: np.ndarray, factors: Sequence[str]) -> dict:
    """Of the votes ``(K, D_active)`` that fixed factor k, the share the classifier gets right.

    The score is the vote-weighted mean of these: a factor that no dimension holds
    scores about 0 here, so a code holding k of the five factors scores about k/5.
    """
    right = np.zeros(len(factors))
    np.add.at(right, classifier, votes[classifier, np.arange(votes.shape[1])])
    total = votes.sum(axis=1)
    return {f: float(right[k] / total[k]) if total[k] else float("nan") for k, f in enumerate(factors)}


def factor_vae_score(encode: Encode | None, seed: int = 0, *, batch_size: int = 64, num_train: int = 10_000,
                     num_eval: int = 5_000, num_variance_estimate: int = 10_000, prune_threshold: float = 0.05,
                     factors: Sequence[str] = DEFAULT_FACTORS, render: Render = render_dsprites,
                     codes_table: np.ndarray | None = None) -> float:
    """FactorVAE disentanglement score (Kim & Mnih 2018, "Disentangling by Factorising", Sec. 4).

    Code dimensions are scaled by their standard deviation over
    ``num_variance_estimate`` random images; dimensions with standard deviation
    below ``prune_threshold`` are pruned (disentanglement_lib compares the
    standard deviation, not the variance, with 0.05). Each vote fixes one
    factor across ``batch_size`` images and records the factor and the active
    dimension of least scaled variance; a majority-vote classifier (dimension ->
    factor) from ``num_train`` votes is scored on ``num_eval`` new votes. No
    active dimension -> 0. Chance is 1/len(factors).
    """
    return factor_vae_details(encode, seed, batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                              num_variance_estimate=num_variance_estimate, prune_threshold=prune_threshold,
                              factors=factors, render=render, codes_table=codes_table)["eval_accuracy"]
