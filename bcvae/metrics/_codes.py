"""Where the metrics get codes, and the checks every array metric applies.

* :func:`sample_factors`: uniform, independent latent classes -- a uniform draw of a
  dSprites image, the distribution every metric samples from;
* :class:`CodeSource`: codes of images looked up by latent classes, each image
  rendered and encoded at most once per evaluation (or read from a table of all);
* :func:`check_codes`, :func:`varying_columns`, :func:`split_points`, :func:`top_two_gap`: the input checks,
  train/test split and top-two gap that MIG, SAP and DCI share.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from bcvae.data.render import FACTOR_NAMES, FACTOR_SIZES, render_dsprites

Encode = Callable[[np.ndarray], np.ndarray]
"""uint8 images ``(B, 64, 64)`` -> codes ``(B, D)``."""
Render = Callable[[np.ndarray], np.ndarray]
"""latent classes ``(B, 6)`` int -> uint8 images ``(B, 64, 64)``."""

DEFAULT_FACTORS = ("shape", "scale", "orientation", "posX", "posY")
"""The factors that count by default: all that vary (disentanglement_lib's dsprites_full)."""


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


def code_source(encode: Encode | None, render: Render, codes_table: np.ndarray | None) -> CodeSource:
    """``encode`` itself when it is already a :class:`CodeSource` (metrics sharing one cache), else a new one."""
    return encode if isinstance(encode, CodeSource) else CodeSource(encode, render, codes_table)


# ---------------------------------------------------------------- checks and splits


def varying_columns(factors: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: which columns of ``factors (N, K)`` hold more than one value (the ones measured)."""
    return np.array([len(np.unique(col)) > 1 for col in np.asarray(factors).T], dtype=bool)


def check_codes(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``codes (N, D)`` and ``factors (N, K)``; keep only factor columns that vary."""
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(f"codes must be (N, D) and factors (N, K) with the same N >= 2, "
                         f"got {codes.shape} and {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must hold integer classes, got dtype {factors.dtype}")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    varying = varying_columns(factors)
    if not varying.any():
        raise ValueError("every factor column holds a single value: nothing to measure")
    return codes, factors[:, varying]


def split_points(n: int, num_train: int | None, num_test: int | None) -> tuple[slice, slice]:
    """Train/test slices: the first ``num_train`` points, then the next ``num_test``.

    Unset sizes follow disentanglement_lib's 10,000 : 5,000 ratio of what is given.
    """
    num_train = n * 2 // 3 if num_train is None else int(num_train)
    num_test = n - num_train if num_test is None else int(num_test)
    if num_train < 1 or num_test < 1 or num_train + num_test > n:
        raise ValueError(f"need num_train + num_test <= N with both >= 1, got {num_train} + {num_test} for N = {n}")
    return slice(0, num_train), slice(num_train, num_train + num_test)


def top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of ``matrix (D, K)``: largest minus second largest entry (second = 0 when D = 1)."""
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if len(ordered) > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second
