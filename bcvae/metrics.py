"""Disentanglement metrics on dSprites: BetaVAE, FactorVAE, MIG, DCI and SAP.

Each metric follows its paper and, for every choice a paper leaves open
(sample sizes, bins, classifiers, how ties and empty cases are scored), the
implementation in disentanglement_lib (Locatello et al. 2019, "Challenging
Common Assumptions in the Unsupervised Learning of Disentangled
Representations"), so the numbers are comparable with that study. Sampling,
rendering and encoding are vectorised; every dSprites image is encoded at
most once per evaluation (:class:`CodeSource`).

Two kinds of input:

* ``mig``, ``sap``, ``dci`` take codes ``(N, D)`` float and ground-truth
  factor classes ``(N, K)`` int. Factor columns holding a single value
  (dSprites' color) carry no information and are left out, as in
  disentanglement_lib, whose dSprites sampler never returns color.
* ``beta_vae_score``, ``factor_vae_score`` sample dSprites themselves:
  ``encode`` maps uint8 images ``(B, 64, 64)`` to codes ``(B, D)`` and
  ``render`` maps latent classes ``(B, 6)`` to images (the procedural
  renderer by default), or ``codes_table`` gives the codes of all 737,280
  images in the real file's order.

Which factors count: by default all five that vary (shape, scale,
orientation, posX, posY) -- disentanglement_lib's ``dsprites_full``. Every
non-counted factor is still sampled at random, as there. Random draws differ
from disentanglement_lib's (one numpy Generator, all draws at once), not
their distribution.

Where this module departs from, or pins down, disentanglement_lib:

* DCI defaults to disentanglement_lib's boosting grown on histogram trees
  with one-vs-rest bins (``model="hist"``, within 0.01 and over 10x faster);
  ``model="gbt"`` is disentanglement_lib's exact
  ``GradientBoostingClassifier()`` (about 4 minutes at the defaults).
* FactorVAE prunes dimensions whose standard deviation (not variance) is
  below 0.05, as disentanglement_lib's ``prune_dims`` does.
* BetaVAE's ``LogisticRegression()`` takes the installed scikit-learn's
  defaults, as disentanglement_lib's call does (lbfgs, multinomial today;
  liblinear one-vs-rest in the scikit-learn of 2019 -- 0.6 points apart on
  a test representation). The version is recorded with every result.

Known properties of the metrics themselves, not of this code:

* SAP on discrete factors scores a perfect representation well below 1: a
  one-dimensional linear one-vs-rest SVM cannot separate 40 orientations,
  and a code unrelated to a uniform factor still scores 1/|V| accuracy.
* MIG with 20 histogram bins cannot reach 1 for factors with more than 20
  values: a perfect code of orientation (40 values) or position (32) keeps
  log(20)/log(40) = 0.81 and 0.85 of the factor entropy; nor is it invariant
  to monotone rescaling of a code.
* No encoder of images can match the ground truth on orientation:
  orientations 0 and 2 pi give the same image, squares repeat every quarter
  turn and ellipses every half turn.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import scipy
import scipy.special
import scipy.stats
import sklearn
from sklearn.ensemble import GradientBoostingClassifier
# Private (HistGradientBoosting's own tree builder), checked with scikit-learn 1.9: grows the
# trees of the default DCI classifier.
from sklearn.ensemble._hist_gradient_boosting.grower import TreeGrower
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from bcvae import config
from bcvae.data.render import FACTOR_NAMES, FACTOR_SIZES, render_dsprites

log = logging.getLogger("bcvae")

Encode = Callable[[np.ndarray], np.ndarray]
"""uint8 images ``(B, 64, 64)`` -> codes ``(B, D)``."""
Render = Callable[[np.ndarray], np.ndarray]
"""latent classes ``(B, 6)`` int -> uint8 images ``(B, 64, 64)``."""

DEFAULT_FACTORS = ("shape", "scale", "orientation", "posX", "posY")
"""The factors that count by default: all that vary (disentanglement_lib's dsprites_full)."""
CHEN_FACTORS = ("scale", "orientation", "posX", "posY")
"""The factors of Chen et al.'s own dSprites MIG (their code leaves shape out)."""
METRICS = config.EVAL_METRICS
"""Every metric :func:`evaluate` knows; all but ``mig_full_grid`` run by default."""


# ---------------------------------------------------------------- sampling


def sample_factors(n: int, rng: np.random.Generator, factor_sizes: Sequence[int] = FACTOR_SIZES) -> np.ndarray:
    """``n`` latent-class tuples ``(n, len(factor_sizes))`` int64, each factor uniform and independent.

    Uniform independent factors are exactly a uniform draw of a dSprites
    image, the distribution every metric here samples from.
    """
    return rng.integers(0, np.asarray(factor_sizes), size=(int(n), len(factor_sizes)), dtype=np.int64)


def factor_columns(factors: Sequence[str]) -> np.ndarray:
    """Factor names -> their column indices in ``latents_classes``; rejects unknown or repeated names."""
    names = tuple(factors)
    unknown = [f for f in names if f not in FACTOR_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"factors must be distinct names from {FACTOR_NAMES}, got {names}")
    return np.array([FACTOR_NAMES.index(f) for f in names], dtype=np.int64)


class CodeSource:
    """Codes of dSprites images looked up by latent classes; each image is encoded at most once.

    Parameters
    ----------
    encode : uint8 images ``(B, 64, 64)`` -> codes ``(B, D)``; unused with ``codes_table``.
    render : latent classes ``(B, 6)`` -> uint8 images ``(B, 64, 64)``.
    codes_table : optional codes ``(737280, D)`` of every image in the real file's order.
    chunk : images rendered and encoded per call of ``render``/``encode``.

    The BetaVAE score alone asks for 1.9 million images at its defaults,
    drawn from only 737,280 distinct ones; caching by image index makes the
    cost at most one pass over the dataset, shared by every metric.
    """

    def __init__(self, encode: Encode | None = None, render: Render = render_dsprites,
                 codes_table: np.ndarray | None = None, chunk: int = 16_384):
        if encode is None and codes_table is None:
            raise ValueError("give an encode function or a codes_table")
        self.encode, self.render, self.chunk = encode, render, int(chunk)
        self.table: np.ndarray | None = None
        self.known: np.ndarray | None = np.zeros(math.prod(FACTOR_SIZES), dtype=bool)
        self.seconds = 0.0  # time spent rendering and encoding
        self.n_encoded = 0
        if codes_table is not None:
            table = np.asarray(codes_table, dtype=np.float64)
            if table.ndim != 2 or len(table) != math.prod(FACTOR_SIZES) or not np.isfinite(table).all():
                raise ValueError(f"codes_table must be finite with shape ({math.prod(FACTOR_SIZES)}, D), "
                                 f"got shape {table.shape}")
            self.table, self.known = table, None

    @property
    def kind(self) -> str:
        """How codes are obtained, for the record."""
        return "encode(render(classes))" if self.known is not None else "codes_table"

    def __call__(self, classes: np.ndarray) -> np.ndarray:
        """Latent classes ``(..., 6)`` int -> codes ``(..., D)`` float64."""
        index = np.ravel_multi_index(classes.reshape(-1, len(FACTOR_SIZES)).T, FACTOR_SIZES)
        if self.known is not None:
            self._fill(index)
        codes = self.table[index]
        return codes.reshape(classes.shape[:-1] + (codes.shape[-1],))

    def _fill(self, index: np.ndarray) -> None:
        missing = np.unique(index[~self.known[index]])
        tic = time.perf_counter()
        for start in range(0, len(missing), self.chunk):
            wanted = missing[start:start + self.chunk]
            classes = np.stack(np.unravel_index(wanted, FACTOR_SIZES), axis=1).astype(np.int64)
            codes = np.asarray(self.encode(self.render(classes)), dtype=np.float64)
            if codes.ndim != 2 or len(codes) != len(wanted) or not np.isfinite(codes).all():
                raise ValueError(f"encode must return finite codes of shape ({len(wanted)}, D) "
                                 f"for {len(wanted)} images, got shape {codes.shape}")
            if self.table is None:
                self.table = np.full((len(self.known), codes.shape[1]), np.nan)
            self.table[wanted] = codes
            self.known[wanted] = True
        self.seconds += time.perf_counter() - tic
        self.n_encoded += len(missing)


def _source(encode: Encode | None, render: Render, codes_table: np.ndarray | None) -> CodeSource:
    return encode if isinstance(encode, CodeSource) else CodeSource(encode, render, codes_table)


# ---------------------------------------------------------------- checks and splits


def _check_codes(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``codes (N, D)`` and ``factors (N, K)``; keep only factor columns that vary."""
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(f"codes must be (N, D) and factors (N, K) with the same N >= 2, "
                         f"got {codes.shape} and {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must hold integer classes, got dtype {factors.dtype}")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    varying = np.array([len(np.unique(col)) > 1 for col in factors.T], dtype=bool)
    if not varying.any():
        raise ValueError("every factor column holds a single value: nothing to measure")
    return codes, factors[:, varying]


def _split(n: int, num_train: int | None, num_test: int | None) -> tuple[slice, slice]:
    """Train/test slices: the first ``num_train`` points, then the next ``num_test``.

    Unset sizes follow disentanglement_lib's 10,000 : 5,000 ratio of what is given.
    """
    num_train = n * 2 // 3 if num_train is None else int(num_train)
    num_test = n - num_train if num_test is None else int(num_test)
    if num_train < 1 or num_test < 1 or num_train + num_test > n:
        raise ValueError(f"need num_train + num_test <= N with both >= 1, got {num_train} + {num_test} for N = {n}")
    return slice(0, num_train), slice(num_train, num_train + num_test)


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of ``matrix (D, K)``: largest minus second largest entry (second = 0 when D = 1)."""
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second


# ---------------------------------------------------------------- MIG


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
    codes, factors = _check_codes(codes, factors)
    disc = discretize(codes, num_bins)
    mi = np.stack([discrete_mutual_info(disc, y) for y in factors.T], axis=1)  # (D, K)
    entropy = np.array([discrete_mutual_info(y[:, None], y)[0] for y in factors.T])
    return float(np.mean(_top_two_gap(mi) / entropy))


# ---------------------------------------------------------------- MIG over the full grid (Chen's estimator)


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
    neg_half_precision = (-0.5 * torch.exp(-logvar)).T.contiguous()
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


# ---------------------------------------------------------------- SAP


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
    codes, factors = _check_codes(codes, factors)
    train, test = _split(len(codes), num_train, num_test)
    with warnings.catch_warnings():
        # A 1-D SVM on an uninformative code often stops at max_iter; its
        # accuracy is still the score disentanglement_lib records.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = _sap_matrix(codes, factors, train, test, continuous_factors)
    return float(np.mean(_top_two_gap(scores)))


# ---------------------------------------------------------------- DCI
#
# The default classifier (model="hist") is disentanglement_lib's
# GradientBoostingClassifier() -- per stage one depth-3 squared-error regression
# tree per class on the residual y_k - p_k, Newton leaf values times (K - 1) / K,
# learning rate 0.1, 100 stages, importance = total impurity decrease -- with each
# tree grown by scikit-learn's histogram grower (HistGradientBoosting's compiled
# tree builder; the exact splitter sorts the samples at every node). At the default
# sizes it is 15x faster (18 s against 275 s a code, 2 busy cores) and within 0.004
# of the exact classifier on known-answer codes. Four choices make it so; each was
# measured to matter:
# * bins per class: the tree of class k splits where the one-vs-rest label changes
#   along a code dimension, so those boundaries become bin edges first (up to
#   _EDGES_PER_TREE, two uint8 columns per dimension; one column, 254 edges, left D
#   and C 0.01 off at 10,000 points, two within 0.005). Quantile bins straddle the
#   class boundaries of posX, posY and orientation, and the trees then split on
#   noise to separate them (a perfect code scored 0.957 instead of 1);
# * impurity decrease from the nodes' gradient sums, as feature_importances_
#   (the grower's own split gain scores the root against 0, not its parent loss);
# * random column order per tree: ties between dimensions are common in small
#   nodes, and the exact splitter breaks them at random, the grower by index;
# * no split of a node whose residual variance is at most machine epsilon, as
#   sklearn's tree (see _tree_nodes).

_COLUMN_EDGES = 254  # thresholds one uint8 column holds (255 non-missing bins)
_EDGES_PER_TREE = 2 * _COLUMN_EDGES


def _spread(index: np.ndarray, m: int) -> np.ndarray:
    """At most ``m`` entries of ``index (L,)``, evenly spaced in its order."""
    if len(index) <= m:
        return index
    return index[np.unique(np.linspace(0, len(index) - 1, m + 2)[1:-1].round().astype(np.int64))]


def _one_vs_rest_edges(group: np.ndarray, group_counts: np.ndarray, in_class: np.ndarray, budget: int) -> np.ndarray:
    """Which boundaries between consecutive distinct values of one code dimension become bin edges.

    ``group (n,)`` is each training point's rank among the ``G`` distinct values, ``group_counts (G,)``
    their multiplicities, ``in_class (n,)`` bool the one-vs-rest label. Every boundary is kept when at
    most ``budget`` exist; else first those where the label can change (not between two groups of one
    pure label), spread evenly if still too many, then the others. Returns boundary indices ``(E,)``
    sorted, boundary g lying between distinct values g and g + 1.
    """
    n_boundaries = len(group_counts) - 1
    if n_boundaries <= budget:
        return np.arange(n_boundaries)
    hits = np.bincount(group, weights=in_class, minlength=len(group_counts))
    pure_in, pure_out = hits == group_counts, hits == 0
    same = (pure_in[:-1] & pure_in[1:]) | (pure_out[:-1] & pure_out[1:])
    first = _spread(np.flatnonzero(~same), budget)
    rest = _spread(np.flatnonzero(same), budget - len(first))
    return np.sort(np.concatenate([first, rest]))


def _uint8_columns(bins: np.ndarray, n_edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin indices ``(N,)`` in 0..n_edges -> uint8 columns ``(N, m)`` and their bin counts ``(m,)``.

    Column j holds clip(bins - 254 j, 0, 254), so its threshold t splits exactly as threshold
    254 j + t of ``bins``: the grower, limited to 255 bins a column, sees every edge.
    """
    m = max(1, -(-n_edges // _COLUMN_EDGES))
    starts = _COLUMN_EDGES * np.arange(m)
    columns = np.clip(bins[:, None] - starts, 0, _COLUMN_EDGES).astype(np.uint8)
    return columns, np.minimum(n_edges - starts, _COLUMN_EDGES) + 1


def _one_vs_rest_bins(codes: np.ndarray, labels: np.ndarray, n_train: int) -> list[tuple]:
    """Binned codes for each one-vs-rest tree.

    ``codes (N, D)`` (training points first), ``labels (n_train, T)`` bool. Returns per tree
    ``(columns (N, M) uint8, owner (M,) code dimension of each column, n_bins (M,))``; edges lie
    midway between distinct training values, chosen by :func:`_one_vs_rest_edges`.
    """
    per_tree = [([], [], []) for _ in range(labels.shape[1])]
    for d in range(codes.shape[1]):
        values, group, counts = np.unique(codes[:n_train, d], return_inverse=True, return_counts=True)
        # rank of every point among the midpoints; a point equal to an edge goes left, as in sklearn
        rank = np.searchsorted((values[1:] + values[:-1]) / 2, codes[:, d])
        for t, (columns, owner, n_bins) in enumerate(per_tree):
            edges = _one_vs_rest_edges(group, counts, labels[:, t], _EDGES_PER_TREE)
            below = np.zeros(len(values), np.int64)
            below[edges + 1] = 1
            cols, nb = _uint8_columns(np.cumsum(below)[rank], len(edges))
            columns.append(cols), owner.append(np.full(len(nb), d)), n_bins.append(nb)
    return [(np.concatenate(c, 1), np.concatenate(o), np.concatenate(b)) for c, o, b in per_tree]


def _grow_tree(columns: np.ndarray, n_bins: np.ndarray, residual: np.ndarray, order: np.ndarray) -> TreeGrower:
    """One depth-3 least-squares regression tree on ``residual (n,)`` over ``columns[:, order]``."""
    grower = TreeGrower(np.asfortranarray(columns[:, order]), (-residual).astype(np.float32),
                        np.ones(1, np.float32),  # unit hessians: squared-error gains, as the exact tree
                        max_depth=3, min_samples_leaf=1, min_hessian_to_split=0.0, l2_regularization=0.0,
                        n_bins=256, n_bins_non_missing=n_bins[order], shrinkage=1.0, n_threads=1)
    grower.grow()
    return grower


def _tree_nodes(grower: TreeGrower, residual: np.ndarray) -> tuple[list, list]:
    """(split nodes, leaves) of a grown tree, with sklearn's rule that a node whose ``residual``
    variance is at most machine epsilon stays a leaf (the grower splits on round-off there, and a
    Newton step on such nearly saturated points is not small).
    """
    splits, leaves, stack = [], [], [grower.root]
    while stack:
        node = stack.pop()
        if node.is_leaf or np.var(residual[node.sample_indices]) <= np.finfo(np.float64).eps:
            node.is_leaf = True  # prunes the subtree for _add_leaf_values too
            leaves.append(node)
        else:
            splits.append(node)
            stack += [node.left_child, node.right_child]
    return splits, leaves


def _impurity_decrease(node) -> float:
    """n_t var_t - n_L var_L - n_R var_R of a split node, from gradient sums (sklearn's importance unit)."""
    left, right = node.left_child, node.right_child
    decrease = (left.sum_gradients ** 2 / left.n_samples + right.sum_gradients ** 2 / right.n_samples
                - node.sum_gradients ** 2 / node.n_samples)
    return max(decrease, 0.0)  # >= 0 in exact arithmetic


def _add_leaf_values(node, columns: np.ndarray, rows: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
    """Add the tree's output at ``columns[rows]`` (binned, unpermuted) to ``out[rows]``."""
    if node.is_leaf:
        out[rows] += node.value
        return
    left = columns[rows, order[node.split_info.feature_idx]] <= node.split_info.bin_idx
    _add_leaf_values(node.left_child, columns, rows[left], order, out)
    _add_leaf_values(node.right_child, columns, rows[~left], order, out)


def _boosted_trees(codes: np.ndarray, y: np.ndarray, n_train: int, seed: int,
                   n_stages: int = 100, learning_rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """GradientBoostingClassifier() on histogram trees (see the section comment).

    ``codes (N, D)`` with the first ``n_train`` rows labelled by ``y (n_train,)``. Returns the
    importances ``(D,)`` summing to 1 (or all 0) and predicted classes for all ``N`` rows.
    """
    classes, label = np.unique(y, return_inverse=True)
    n_classes = len(classes)
    onehot = label[:, None] == np.arange(n_classes)
    if n_classes == 2:  # binary: one tree per stage on the logit, like sklearn's HalfBinomialLoss
        onehot = onehot[:, 1:]
    prior = np.clip(onehot.mean(axis=0), np.finfo(float).eps, 1 - np.finfo(float).eps)
    raw = np.tile(np.log(prior) if n_classes > 2 else np.log(prior / (1 - prior)), (len(codes), 1))
    raw = np.asfortranarray(raw)  # (N, T): columns contiguous for the per-tree updates
    newton = (n_classes - 1) / n_classes if n_classes > 2 else 1.0
    binned = _one_vs_rest_bins(codes, onehot, n_train)
    rng = np.random.default_rng(seed)
    importance = np.zeros(codes.shape[1])
    test = np.arange(n_train, len(codes))
    for _ in range(n_stages):
        prob = scipy.special.softmax(raw[:n_train], axis=1) if n_classes > 2 else scipy.special.expit(raw[:n_train])
        residual = np.asfortranarray(onehot - prob)
        hessian = np.asfortranarray(prob * (1 - prob))
        for t, (columns, owner, n_bins) in enumerate(binned):
            order = rng.permutation(columns.shape[1])
            grower = _grow_tree(columns[:n_train], n_bins, residual[:, t], order)
            splits, leaves = _tree_nodes(grower, residual[:, t])
            for node in splits:
                importance[owner[order[node.split_info.feature_idx]]] += _impurity_decrease(node)
            for leaf in leaves:  # one Newton step per leaf, as sklearn's line search
                rows = leaf.sample_indices
                denominator = hessian[rows, t].sum()
                step = newton * residual[rows, t].sum() / denominator if abs(denominator) >= 1e-150 else 0.0
                leaf.value = learning_rate * step
                raw[rows, t] += leaf.value
            _add_leaf_values(grower.root, columns, test, order, raw[:, t])
    total = importance.sum()
    predicted = classes[np.argmax(raw, axis=1) if n_classes > 2 else (raw[:, 0] > 0).astype(np.int64)]
    return (importance / total if total > 0 else importance), predicted


def _fit_importances(codes: np.ndarray, y: np.ndarray, n_train: int, model: str, seed: int):
    """One classifier of one factor: ``codes (N, D)``, the first ``n_train`` rows labelled by ``y``.

    Returns (importances ``(D,)``, predicted classes ``(N,)``).
    """
    if model not in ("hist", "gbt"):
        raise ValueError(f"dci model must be 'hist' or 'gbt', got {model!r}")
    if len(np.unique(y)) < 2:
        raise ValueError("a factor holds a single value in the training points: use more training points")
    if model == "gbt":
        clf = GradientBoostingClassifier(random_state=seed).fit(codes[:n_train], y)
        return np.abs(clf.feature_importances_), clf.predict(codes)
    return _boosted_trees(codes, y, n_train, seed)


def dci_scores(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix ``R (D, K)`` (Eastwood & Williams 2018, Sec. 3).

    D_j = 1 - H_K(P_j.), P_jk = R_jk / sum_k R_jk, weighted by rho_j = sum_k R_jk / sum R;
    C_k = 1 - H_D(P_.k), weighted by the factor's share of the importance. A
    1e-11 floor and the all-zero convention follow disentanglement_lib.
    """
    r = np.asarray(importance, dtype=np.float64)
    weights = r if r.sum() > 0 else np.ones_like(r)
    per_code = 1.0 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])
    per_factor = 1.0 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])
    disentanglement = np.sum(per_code * weights.sum(axis=1) / weights.sum())
    completeness = np.sum(per_factor * weights.sum(axis=0) / weights.sum())
    return float(disentanglement), float(completeness)


def dci(codes: np.ndarray, factors: np.ndarray, *, num_train: int | None = None, num_test: int | None = None,
        seed: int = 0, model: str = "hist") -> dict[str, float]:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018, "A Framework for
    the Quantitative Evaluation of Disentangled Representations").

    One gradient-boosted-tree classifier per factor predicts it from all code
    dimensions; its feature importances fill column k of R ``(D, K)``
    (see :func:`dci_scores`). Informativeness is the classifiers' test
    accuracy averaged over factors, as disentanglement_lib reports it.

    Parameters
    ----------
    codes, factors : ``(N, D)`` float and ``(N, K)`` int; constant factor columns are left out.
    num_train, num_test : first ``num_train`` points train, next ``num_test`` test
        (disentanglement_lib: 10,000 and 5,000); unset -> 2/3 and 1/3 of N.
    model : ``"gbt"`` -- disentanglement_lib's exact ``GradientBoostingClassifier()``
        with impurity importances (about 4 minutes for 10,000 dSprites points on one
        core: 100 trees per class per factor, 113 classes in all); ``"hist"`` (default)
        -- the same boosting (stages, trees, leaf values, impurity importances) with
        each tree grown on histograms of one-vs-rest bins (see the comment above
        :func:`_boosted_trees`): within 0.01 of ``"gbt"`` on known-answer codes and
        over 10x faster.

    Returns
    -------
    dict with ``disentanglement``, ``completeness``, ``informativeness`` (test
    accuracy) and ``informativeness_train``.
    """
    codes, factors = _check_codes(codes, factors)
    train, test = _split(len(codes), num_train, num_test)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    acc_train, acc_test = [], []
    codes = codes[:test.stop]  # training rows first, then test rows
    # One OpenMP thread: on a busy 2-core machine two spinning threads made the
    # histogram trees 15x slower (189 s instead of 12 s at the default sizes).
    with threadpool_limits(limits=1):
        for k in range(factors.shape[1]):
            importance[:, k], predicted = _fit_importances(codes, factors[train, k], train.stop, model, seed)
            acc_train.append(np.mean(predicted[train] == factors[train, k]))
            acc_test.append(np.mean(predicted[test] == factors[test, k]))
    disentanglement, completeness = dci_scores(importance)
    return {"disentanglement": disentanglement, "completeness": completeness,
            "informativeness": float(np.mean(acc_test)), "informativeness_train": float(np.mean(acc_train))}


# ---------------------------------------------------------------- BetaVAE score


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
    source, rng, cols = _source(encode, render, codes_table), np.random.default_rng(seed), factor_columns(factors)
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


# ---------------------------------------------------------------- FactorVAE score


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
    source, rng, cols = _source(encode, render, codes_table), np.random.default_rng(seed), factor_columns(factors)
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
    out["train_accuracy"] = float(train_votes[classifier, dims].sum() / train_votes.sum())
    out["eval_accuracy"] = float(eval_votes[classifier, dims].sum() / eval_votes.sum())
    return out


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


# ---------------------------------------------------------------- evaluate


def _keyword_defaults(fn: Callable, skip: tuple = ("render", "codes_table", "factors")) -> dict:
    """A metric's keyword settings and their defaults, so the record lists every setting used."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in skip}


def _check_request(metrics: Sequence[str], settings: dict, codes_table, logvar_table) -> None:
    unknown = [m for m in (*metrics, *settings) if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if "mig_full_grid" in metrics and (codes_table is None or logvar_table is None):
        raise ValueError("mig_full_grid needs codes_table and logvar_table (the posterior of every image)")
    for name, overrides in settings.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"settings for {name} must be a dict of keyword arguments, got {overrides!r}")


def _sampled_metrics(metrics, source, cols, seed, num_points, settings, record, seconds) -> dict:
    """MIG, SAP and DCI on one shared sample: ``num_points`` training points + half as many test points."""
    scores = {}
    tic, spent = time.perf_counter(), source.seconds
    classes = sample_factors(num_points + num_points // 2, np.random.default_rng(seed))
    codes, labels = source(classes), classes[:, cols]
    seconds["sample"] = time.perf_counter() - tic - (source.seconds - spent)
    sizes = {"mig": {}, "sap": {"num_train": num_points, "num_test": num_points // 2},
             "dci": {"num_train": num_points, "num_test": num_points // 2, "seed": seed}}
    for name, fn in (("mig", mig), ("sap", sap), ("dci", dci)):
        if name in metrics:
            kwargs = {**_keyword_defaults(fn), **sizes[name], **settings.get(name, {})}
            n = num_points if name == "mig" else len(codes)  # MIG uses the training points only
            tic, spent = time.perf_counter(), source.seconds
            log.info("metric %s ...", name)
            scores[name] = fn(codes[:n], labels[:n], **kwargs)
            seconds[name] = time.perf_counter() - tic - (source.seconds - spent)
            log.info("metric %s done in %.1f s", name, seconds[name])
            record[name] = {**kwargs, **({"num_points": n} if name == "mig" else {})}
    return scores


def _sampling_metrics(metrics, source, factors, seed, num_points, settings, record, seconds, notes) -> dict:
    """BetaVAE and FactorVAE, each sampling its own image batches."""
    scores = {}
    sizes = {"num_train": num_points, "num_eval": num_points // 2}
    for name, fn in (("beta_vae", beta_vae_details), ("factor_vae", factor_vae_details)):
        if name not in metrics:
            continue
        extra = {"num_variance_estimate": num_points} if name == "factor_vae" else {}
        kwargs = {**_keyword_defaults(fn), **sizes, **extra, **settings.get(name, {})}
        tic, spent = time.perf_counter(), source.seconds
        log.info("metric %s ...", name)
        details = fn(source, seed, factors=factors, **kwargs)
        seconds[name] = time.perf_counter() - tic - (source.seconds - spent)
        log.info("metric %s done in %.1f s (%.1f s rendering and encoding so far)", name, seconds[name],
                 source.seconds)
        scores[name], scores[f"{name}_train"] = details["eval_accuracy"], details["train_accuracy"]
        if name == "factor_vae":
            scores["factor_vae_active_dims"] = details["num_active_dims"]
        if "note" in details:
            notes.append(f"{name}: {details['note']}")
        record[name] = kwargs
    return scores


def evaluate(encode: Encode | None = None, metrics: Sequence[str] = METRICS[:5], seed: int = 0, *,
             num_points: int = 10_000, render: Render = render_dsprites, codes_table: np.ndarray | None = None,
             logvar_table: np.ndarray | None = None, factors: Sequence[str] = DEFAULT_FACTORS,
             representation: str = "mean", **settings: dict) -> dict:
    """Compute the requested metrics of one representation, timing each and recording every setting.

    Parameters
    ----------
    encode : uint8 images ``(B, 64, 64)`` -> codes ``(B, D)``; with ``render`` it is called
        on each needed image once (all metrics share the cache).
    codes_table : codes ``(737280, D)`` of every image in the real file's order; replaces
        encode and render (the fastest route when the whole dataset is encoded anyway).
    logvar_table : posterior log-variances ``(737280, D)``; only for ``mig_full_grid``.
    num_points : disentanglement_lib's training-set size, used by every metric: MIG's
        points, SAP/DCI/BetaVAE/FactorVAE training points and FactorVAE's variance
        estimate; test/eval sets get ``num_points // 2``. 10,000 gives disentanglement_lib's
        defaults exactly.
    factors : names of the factors that count.
    representation : what ``encode`` returns ("mean" = encoder mean), recorded as given.
    **settings : per-metric keyword overrides, e.g. ``dci={"model": "gbt"}``, ``mig={"num_bins": 30}``.

    Returns
    -------
    ``{"scores": {...}, "settings": {...}, "seconds": {...}, "notes": [...]}``; scores
    ``mig``, ``sap``, ``dci`` (dict), ``beta_vae`` and ``factor_vae`` (eval accuracy) with
    ``*_train`` accuracies and ``factor_vae_active_dims``; seconds per metric exclude
    rendering and encoding, which is ``seconds["render_encode"]``.
    """
    metrics = tuple(metrics)
    _check_request(metrics, settings, codes_table, logvar_table)
    source, cols = _source(encode, render, codes_table), factor_columns(factors)
    record = {"seed": seed, "factors": list(factors), "representation": representation, "num_points": num_points,
              "codes": source.kind, "sklearn": sklearn.__version__, "numpy": np.__version__,
              "scipy": scipy.__version__}
    seconds, notes, scores, start = {}, [], {}, time.perf_counter()
    if {"mig", "sap", "dci"} & set(metrics):
        log.info("sampling %d + %d points for %s", num_points, num_points // 2,
                 ", ".join(m for m in metrics if m in ("mig", "sap", "dci")))
        scores.update(_sampled_metrics(metrics, source, cols, seed, num_points, settings, record, seconds))
    scores.update(_sampling_metrics(metrics, source, factors, seed, num_points, settings, record, seconds, notes))
    if "mig_full_grid" in metrics:
        kwargs = {**_keyword_defaults(mig_full_grid, skip=()), "seed": seed, **settings.get("mig_full_grid", {})}
        tic = time.perf_counter()
        scores["mig_full_grid"] = mig_full_grid(source.table, logvar_table, **kwargs)
        seconds["mig_full_grid"] = time.perf_counter() - tic
        import torch

        record["mig_full_grid"] = {**kwargs, "factors": list(kwargs["factors"]), "torch": torch.__version__}
    seconds["render_encode"], seconds["total"] = source.seconds, time.perf_counter() - start
    record["images_encoded"] = source.n_encoded
    return {"scores": scores, "settings": record, "seconds": seconds, "notes": notes}
