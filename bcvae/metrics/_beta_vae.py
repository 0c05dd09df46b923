"""The BetaVAE score (Higgins et al. 2017): which factor do image pairs share?"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from bcvae.data.render import render_dsprites
from bcvae.metrics._codes import (
    DEFAULT_FACTORS, CodeSource, Encode, Render, code_source, factor_columns, sample_factors,
)


def _beta_vae_points(source: CodeSource, rng: np.random.Generator, cols: np.ndarray, n: int,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` BetaVAE training points: features ``(n, D)`` and labels ``(n,)`` (index into ``cols``).

    Each point fixes one factor k (uniform over the counted ones), draws
    ``batch_size`` pairs of images sharing k and nothing else by design, and
    takes the mean |z1 - z2| over the pairs (Higgins et al. 2017, Sec. 3).
    """
    labels = rng.integers(len(cols), size=n)
    first = sample_factors(n * batch_size, rng).reshape(n, batch_size, -1)
    second = sample_factors(n * batch_size, rng).reshape(n, batch_size, -1)
    rows, fixed = np.arange(n), cols[labels]
    second[rows, :, fixed] = first[rows, :, fixed]
    return np.abs(source(first) - source(second)).mean(axis=1), labels


def beta_vae_details(encode: Encode | CodeSource | None, seed: int = 0, *, batch_size: int = 64,
                     num_train: int = 10_000, num_eval: int = 5_000, factors: Sequence[str] = DEFAULT_FACTORS,
                     render: Render = render_dsprites, codes_table: np.ndarray | None = None) -> dict:
    """:func:`beta_vae_score` with the train accuracy too: ``{"eval_accuracy", "train_accuracy"}``."""
    source, rng, cols = code_source(encode, render, codes_table), np.random.default_rng(seed), factor_columns(factors)
    x_train, y_train = _beta_vae_points(source, rng, cols, num_train, batch_size)
    # disentanglement_lib's LogisticRegression(random_state=...) with the installed sklearn's
    # defaults (now lbfgs, multinomial, C=1, 100 iterations).
    clf = LogisticRegression(random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x_train, y_train)
    x_eval, y_eval = _beta_vae_points(source, rng, cols, num_eval, batch_size)
    out = {"eval_accuracy": float(clf.score(x_eval, y_eval)), "train_accuracy": float(clf.score(x_train, y_train))}
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        out["note"] = "logistic regression stopped at its iteration limit (sklearn default max_iter=100)"
    return out


def beta_vae_score(encode: Encode | None, seed: int = 0, *, batch_size: int = 64, num_train: int = 10_000,
                   num_eval: int = 5_000, factors: Sequence[str] = DEFAULT_FACTORS, render: Render = render_dsprites,
                   codes_table: np.ndarray | None = None) -> float:
    """BetaVAE disentanglement score (Higgins et al. 2017, "beta-VAE: Learning Basic Visual
    Concepts with a Constrained Variational Framework", Sec. 3 and Appendix).

    Accuracy on ``num_eval`` held-out points of a logistic-regression classifier
    that predicts, from the mean absolute code difference of ``batch_size``
    image pairs, which factor the pairs share; trained on ``num_train`` points.
    Chance is 1/len(factors). Defaults are disentanglement_lib's.

    Parameters
    ----------
    encode : uint8 images ``(B, 64, 64)`` -> codes ``(B, D)`` (encoder means).
    render : latent classes ``(B, 6)`` -> images; ``codes_table`` ``(737280, D)``
        replaces encode and render by a lookup.
    """
    return beta_vae_details(encode, seed, batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                            factors=factors, render=render, codes_table=codes_table)["eval_accuracy"]
