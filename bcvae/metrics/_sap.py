"""Separated Attribute Predictability (Kumar et al. 2018), as disentanglement_lib computes it."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from bcvae.metrics._codes import check_codes, split_points, top_two_gap


def _sap_matrix(codes: np.ndarray, factors: np.ndarray, train: slice, test: slice,
                continuous_factors: bool) -> np.ndarray:
    """Score of each (code dimension, factor) pair: ``(D, K)``."""
    d, k = codes.shape[1], factors.shape[1]
    scores = np.zeros((d, k))
    for i in range(d):
        for j in range(k):
            z, y = codes[train, i], factors[train, j].astype(np.float64)
            if continuous_factors:  # squared correlation on the training points
                cov = np.cov(z, y, ddof=1)
                scores[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            else:  # balanced 1-D linear SVM, accuracy on the test points
                svm = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
                svm.fit(z[:, None], factors[train, j])
                scores[i, j] = np.mean(svm.predict(codes[test, i][:, None]) == factors[test, j])
    return scores


def sap(codes: np.ndarray, factors: np.ndarray, *, num_train: int | None = None, num_test: int | None = None,
        continuous_factors: bool = False) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations", Sec. 3).

    SAP = 1/K sum_k (S_{j(k),k} - max_{j != j(k)} S_{j,k}) where S_{j,k} scores how
    well code dimension j alone predicts factor k. As in disentanglement_lib:
    discrete factors -> test accuracy of ``LinearSVC(C=0.01, class_weight="balanced")``
    trained on the one code dimension; ``continuous_factors=True`` -> squared
    correlation on the training points.

    Parameters
    ----------
    codes, factors : ``(N, D)`` float and ``(N, K)`` int; constant factor columns are left out.
    num_train, num_test : the first ``num_train`` points train, the next ``num_test`` test
        (disentanglement_lib: 10,000 and 5,000); unset -> 2/3 and 1/3 of N.
    """
    codes, factors = check_codes(codes, factors)
    train, test = split_points(len(codes), num_train, num_test)
    with warnings.catch_warnings():
        # A 1-D SVM on an uninformative code often stops at max_iter; its
        # accuracy is still the score disentanglement_lib records.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = _sap_matrix(codes, factors, train, test, continuous_factors)
    return float(np.mean(top_two_gap(scores)))
