"""Mutual Information Gap: the histogram estimator of disentanglement_lib (:func:`mig`) and
Chen et al.'s own estimator over every image's posterior (:func:`mig_full_grid`); with the
same mixture entropies, each latent's KL split into information and marginal mismatch
(:func:`latent_information`)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from bcvae.data.render import FACTOR_SIZES
from bcvae.metrics._codes import check_codes, factor_columns, top_two_gap, varying_columns

CHEN_FACTORS = ("scale", "orientation", "posX", "posY")
"""The factors of Chen et al.'s own dSprites MIG (their code leaves shape out)."""


def discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Histogram discretisation of each code dimension: ``(N, D)`` float -> ``(N, D)`` int in 1..num_bins.

    ``num_bins`` equal-width bins between each dimension's min and max, the
    maximum falling in the last bin (numpy's histogram edges, as in
    disentanglement_lib's histogram discretizer).
    """
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins=num_bins)
        out[:, d] = np.digitize(codes[:, d], edges[:-1])
    return out


def _dense_labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer labels as small non-negative ints (kept when already so: no sort) and their count bound."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() < 65_536:
        return x.astype(np.int64, copy=False), int(x.max()) + 1
    _, inverse = np.unique(x, return_inverse=True)
    return inverse.reshape(x.shape), int(inverse.max()) + 1


def discrete_mutual_info(discrete: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Plug-in mutual information (nats) of each column of ``discrete (N, D)`` with ``labels (N,)``: ``(D,)``.

    I(a; b) = sum_ab p(a, b) log[p(a, b) / (p(a) p(b))] from the empirical joint
    distribution -- what ``sklearn.metrics.mutual_info_score`` computes, for all
    D columns at once.
    """
    n, d = discrete.shape
    a, na = _dense_labels(discrete)
    b, nb = _dense_labels(labels)
    flat = (np.arange(d) * na)[None, :] + a  # (N, D) joint cell of (dimension, code value)
    joint = np.bincount((flat * nb + b[:, None]).ravel(), minlength=d * na * nb).reshape(d, na, nb) / n
    pa, pb = joint.sum(axis=2, keepdims=True), joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / (pa * pb)), 0.0)
    return np.maximum(terms.sum(axis=(1, 2)), 0.0)  # clip fp round-off below zero


def mig(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", Sec. 5).

    MIG = 1/K sum_k [I(z_j(k); v_k) - max_{j != j(k)} I(z_j; v_k)] / H(v_k),
    j(k) = argmax_j I(z_j; v_k), with the discrete estimator of disentanglement_lib:
    each code dimension histogram-discretised into ``num_bins`` bins, plug-in
    mutual information and entropy from the N points.

    Parameters
    ----------
    codes : ``(N, D)`` float, e.g. encoder means of N random images (10,000 in disentanglement_lib).
    factors : ``(N, K)`` int ground-truth classes; constant columns are left out.
    num_bins : bins per code dimension (20 in disentanglement_lib).
    """
    return float(np.nanmean(mig_per_factor(codes, factors, num_bins=num_bins)))


def mig_per_factor(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = 20) -> np.ndarray:
    """The terms MIG averages: each factor's gap [I(z_j(k); v_k) - max_{j != j(k)} I(z_j; v_k)] / H(v_k), ``(K,)``.

    NaN for a factor column that holds a single value (no entropy to normalise by;
    :func:`mig` leaves it out). A factor no dimension holds has a gap near 0, so
    this says which factors a low MIG is missing and which are held but shared.
    """
    codes, kept = check_codes(codes, factors)
    varying = varying_columns(factors)
    disc = discretize(codes, num_bins)
    mi = np.stack([discrete_mutual_info(disc, y) for y in kept.T], axis=1)  # (D, K kept)
    entropy = np.array([discrete_mutual_info(y[:, None], y)[0] for y in kept.T])
    out = np.full(varying.shape, np.nan)
    out[varying] = top_two_gap(mi) / entropy
    return out


# ---------------------------------------------------------------- MIG over the full grid (Chen's estimator)


def _precision(logvar):
    """1/σ² = exp(−log σ²), ``logvar``'s shape, capped at the dtype's largest finite value.

    Below log σ² ≈ −88 (float32) exp(−log σ²) is infinite, and a sample drawn at its own
    component's mean (σ underflows, so z − μ is exactly 0) would give 0·inf = NaN. The cap
    makes that square term 0 and leaves every other one at least 10³⁸ below zero, where the
    logsumexp ignores it as it would the exact value; only a collapsed posterior gets there.
    The training loss guards the same 0·inf with a mask on z − μ == 0 instead
    (``losses._log_density_matrix``), which keeps its gradients finite; no gradient flows here,
    and the cap is one op on the (M, D) table where a mask would cost a pass in the inner loop.
    """
    import torch

    return torch.exp(-logvar).clamp(max=torch.finfo(logvar.dtype).max)


def _log_mixture(points, mu, logvar, budget: int):
    """log q(z_d) = log 1/M sum_m N(z_d; mu_md, exp(logvar_md)) at ``points (S, D)``: ``(S, D)`` tensor.

    Streams over chunks of samples and components with a running logsumexp,
    so memory stays at ``budget`` elements whatever S and M are. Layout
    (D, samples, components) with in-place ops: 3x faster than broadcasting
    over (samples, components, D) on CPU.
    """
    import torch

    (s_total, d), m_total = points.shape, mu.shape[0]
    mu_t = mu.T.contiguous()
    neg_half_precision = (-0.5 * _precision(logvar)).T.contiguous()
    log_norm = (-0.5 * (logvar + math.log(2 * math.pi))).T.contiguous()
    s_chunk = min(s_total, 1024)
    m_chunk = max(1, budget // (d * s_chunk))
    out = torch.empty(s_total, d, dtype=points.dtype, device=points.device)
    for s0 in range(0, s_total, s_chunk):
        z = points[s0:s0 + s_chunk].T[:, :, None]  # (D, s, 1)
        acc = torch.full(z.shape[:2], -math.inf, dtype=points.dtype, device=points.device)
        for m0 in range(0, m_total, m_chunk):
            sl = slice(m0, m0 + m_chunk)
            dens = z - mu_t[:, None, sl]  # (D, s, m) log N(z; mu, var), built in place
            dens.square_().mul_(neg_half_precision[:, None, sl]).add_(log_norm[:, None, sl])
            acc = torch.logaddexp(acc, torch.logsumexp(dens, dim=-1))
        out[s0:s0 + s_chunk] = (acc - math.log(m_total)).T
    return out


def _log_joint_mixture(points, mu, logvar, budget: int):
    """log q(z) = log 1/M sum_m prod_d N(z_d; mu_md, exp(logvar_md)) at ``points (S, D)``: ``(S,)`` tensor.

    The joint counterpart of :func:`_log_mixture`: the D log-densities of a component are
    summed before the logsumexp over components, chunked to ``budget`` elements.
    """
    import torch

    (s_total, d), m_total = points.shape, mu.shape[0]
    mu_t = mu.T.contiguous()
    neg_half_precision = (-0.5 * _precision(logvar)).T.contiguous()
    log_norm = (-0.5 * (logvar + math.log(2 * math.pi))).sum(dim=1)  # (M,)
    s_chunk = min(s_total, 256)
    m_chunk = max(1, budget // s_chunk)
    out = torch.empty(s_total, dtype=points.dtype, device=points.device)
    for s0 in range(0, s_total, s_chunk):
        z = points[s0:s0 + s_chunk]  # (s, D)
        acc = torch.full((len(z),), -math.inf, dtype=points.dtype, device=points.device)
        for m0 in range(0, m_total, m_chunk):
            sl = slice(m0, m0 + m_chunk)
            dens = log_norm[None, sl].repeat(len(z), 1)  # (s, m)
            for j in range(d):
                term = z[:, j, None] - mu_t[j, None, sl]
                dens.add_(term.square_().mul_(neg_half_precision[j, None, sl]))
            acc = torch.logaddexp(acc, torch.logsumexp(dens, dim=-1))
        out[s0:s0 + s_chunk] = acc - math.log(m_total)
    return out


def _entropy_estimate(z, mu, logvar, rng: np.random.Generator, n_samples: int, budget: int):
    """H(z_d) = E[-log q(z_d)] per dimension ``(D,)``, from ``n_samples`` of the population's own samples ``z``."""
    import torch

    pick = torch.as_tensor(rng.permutation(len(z))[:n_samples], device=z.device)
    return -_log_mixture(z[pick], mu, logvar, budget).double().mean(dim=0)


def _conditional_entropy(tensors: tuple, sizes: tuple, col: int, rng: np.random.Generator, n_samples: int,
                         budget: int):
    """1/|V| sum_v H(z_d | v_col = v) ``(D,)``: each value's images form their own mixture and samples."""
    grids = [t.reshape(sizes + (t.shape[-1],)) for t in tensors]  # the file's C order over the factors
    total = 0.0
    for v in range(sizes[col]):
        z, mu, lv = (g.select(col, v).reshape(-1, g.shape[-1]) for g in grids)
        total = total + _entropy_estimate(z, mu, lv, rng, n_samples, budget)
    return total / sizes[col]


def mig_full_grid(mean: np.ndarray, logvar: np.ndarray, *, factors: Sequence[str] = CHEN_FACTORS,
                  n_samples: int = 10_000, seed: int = 0, device: str | None = None,
                  factor_sizes: Sequence[int] = FACTOR_SIZES) -> float:
    """MIG with Chen et al.'s own estimator over every image (Chen et al. 2018, Sec. 5 and their code).

    The encoder's posterior q(z|x) = N(mean, exp(logvar)) of all images
    defines q(z_d) = 1/N sum_n q(z_d|x_n) and, for each value v of factor k,
    q(z_d | v_k = v) = the same mixture over the images with that value. Then
    I(z_d; v_k) = H(z_d) - 1/|V_k| sum_v H(z_d | v_k = v), each entropy a Monte
    Carlo average of -log q over ``n_samples`` samples z ~ q(z|x) of random
    images of that population (Chen: 10,000). Per factor: mutual informations
    sorted, clipped at 0, divided by log |V_k| (the exact factor entropy), top-two
    gap; MIG is the mean over ``factors`` (Chen's dSprites set leaves shape out).

    Parameters
    ----------
    mean, logvar : ``(N, D)`` posterior parameters of all N images in the real file's
        order (C order over ``factor_sizes``; N = 737,280 for dSprites).
    device : torch device for the O(n_samples * N * D) density sums (default: cuda if
        available). On 2 CPU cores the default ``n_samples`` takes tens of minutes.
    """
    import torch

    sizes = tuple(int(s) for s in factor_sizes)
    mean, logvar = np.asarray(mean), np.asarray(logvar)
    if mean.shape != logvar.shape or mean.ndim != 2 or len(mean) != math.prod(sizes):
        raise ValueError(f"mean and logvar must both be ({math.prod(sizes)}, D), got {mean.shape} and {logvar.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(logvar).all()):
        raise ValueError("mean or logvar contain NaN or infinite values")
    cols = factor_columns(factors)
    if any(sizes[c] < 2 for c in cols):
        raise ValueError(f"mig_full_grid factors must take at least 2 values, got {tuple(factors)} of sizes {sizes}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = 1 << (28 if dev.type == "cuda" else 22)
    rng = np.random.default_rng(seed)
    mu = torch.as_tensor(mean, dtype=torch.float32, device=dev)
    lv = torch.as_tensor(logvar, dtype=torch.float32, device=dev)
    eps = torch.as_tensor(rng.standard_normal(mean.shape, dtype=np.float32), device=dev)
    z = mu + torch.exp(0.5 * lv) * eps  # one sample of q(z|x) per image, as in Chen's code
    h_marginal = _entropy_estimate(z, mu, lv, rng, n_samples, budget)
    gaps = []
    for col in cols:
        h_cond = _conditional_entropy((z, mu, lv), sizes, int(col), rng, n_samples, budget)
        mi = torch.sort(h_marginal - h_cond, descending=True).values.clamp(min=0) / math.log(sizes[col])
        gaps.append(float(mi[0] - (mi[1] if len(mi) > 1 else 0.0)))
    return float(np.mean(gaps))


# ---------------------------------------------------------------- where each latent's KL goes


def latent_information(mean: np.ndarray, logvar: np.ndarray, *, n_samples: int = 2_000, seed: int = 0,
                       device: str | None = None) -> dict:
    """Where the KL goes: each latent's KL_j = I(x; z_j) + KL(q(z_j) ‖ p(z_j)), and for the whole
    code KL = I(x; z) + sum_j KL(q(z_j) ‖ p(z_j)) + TC(q(z)), over the images given.

    With x uniform over the N images, q(z) = 1/N sum_n q(z|x_n) and its marginals q(z_j):
    E_x KL(q(z|x) ‖ N(0, I)) is exact; I(x; z_j) = E[log q(z_j|x) - log q(z_j)] and
    I(x; z) = E[log q(z|x) - log q(z)] are Monte Carlo averages over ``n_samples`` random
    images, one z ~ q(z|x) each, every log q summed over the whole mixture (as
    :func:`mig_full_grid`). Scoring each sample against its own component as well cancels
    most of the sampling noise: when the images fall into K groups with one posterior each
    and the groups do not overlap, every term is exactly log K. The marginal KLs are the
    remainders, and the total correlation TC = sum_j I(x; z_j) - I(x; z) (the posterior
    factorises, so the conditional entropies cancel) counts information several latents
    hold in common. Nats in a marginal KL or in TC carry nothing more about x.

    Parameters
    ----------
    mean, logvar : ``(N, D)`` posterior parameters of N images (all 737,280 for dSprites).

    Returns
    -------
    ``{"kl", "mutual_information", "marginal_kl"}``, each ``(D,)`` float64 in nats, and
    ``"joint"``: ``{"kl", "mutual_information", "marginal_kl", "total_correlation"}`` of the
    whole code (I(x; z) <= log N up to the estimate's noise).
    """
    import torch

    mean, logvar = np.asarray(mean, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    if mean.shape != logvar.shape or mean.ndim != 2 or len(mean) < 2:
        raise ValueError(f"mean and logvar must both be (N, D) with N >= 2, got {mean.shape} and {logvar.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(logvar).all()):
        raise ValueError("mean or logvar contain NaN or infinite values")
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar).mean(axis=0)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rng = np.random.default_rng(seed)
    mu = torch.as_tensor(mean, dtype=torch.float32, device=dev)
    lv = torch.as_tensor(logvar, dtype=torch.float32, device=dev)
    pick = torch.as_tensor(rng.permutation(len(mean))[:n_samples], device=dev)
    eps = torch.as_tensor(rng.standard_normal((len(pick), mean.shape[1]), dtype=np.float32), device=dev)
    z = mu[pick] + torch.exp(0.5 * lv[pick]) * eps  # (S, D): one z ~ q(z|x) per sampled image
    own = (-0.5 * (eps.square() + lv[pick] + math.log(2 * math.pi))).double()  # log q(z_j|x), (S, D)
    budget = 1 << (28 if dev.type == "cuda" else 22)
    info = (own - _log_mixture(z, mu, lv, budget).double()).mean(dim=0).cpu().numpy()
    joint_info = float((own.sum(dim=1) - _log_joint_mixture(z, mu, lv, budget).double()).mean())
    joint = {"kl": float(kl.sum()), "mutual_information": joint_info, "marginal_kl": float(kl.sum()) - joint_info,
             "total_correlation": float(info.sum()) - joint_info}
    return {"kl": kl, "mutual_information": info, "marginal_kl": kl - info, "joint": joint}
