"""In-RAM splits of the fold cache and fast float batches on the device.

A split is read from the HDF5 cache with a few contiguous slice reads and kept
bit-packed in RAM (512 bytes per image: the 663,552 training images of a 10-fold
split take 340 MB). A batch is gathered from the packed rows in numpy, moved to
the device as uint8 and unpacked there, so float32 images exist only per batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from bcvae.data.dsprites import DatasetError
from bcvae.data.folds import (
    PACKED_BYTES,
    ensure_cache,
    fold_digest,
    fold_digests,
    read_provenance,
    rebuild_cache,
    unpack_images,
    validate_data_config,
)

if TYPE_CHECKING:
    from pathlib import Path

    from bcvae.config import DataConfig


@dataclass
class FoldData:
    """Images of one or more folds, bit-packed in RAM.

    Attributes
    ----------
    packed : (N, 512) uint8, ``np.packbits`` of each image's 4096 pixels (MSB first)
    factors : (N, 6) int64 latents_classes
    index : (N,) int64 index of each image in the real file's order
    """

    packed: np.ndarray
    factors: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.packed)
        if self.packed.shape != (n, PACKED_BYTES) or self.packed.dtype != np.uint8:
            raise ValueError(f"packed must be (N, {PACKED_BYTES}) uint8, got "
                             f"{self.packed.shape} {self.packed.dtype}")
        if self.factors.shape != (n, 6) or self.index.shape != (n,):
            raise ValueError(f"factors (N, 6) and index (N,) must match N = {n}, got "
                             f"{self.factors.shape} and {self.index.shape}")

    def __len__(self) -> int:
        return len(self.packed)

    def images(self, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` as ``(B, 64, 64)`` uint8 0/1."""
        return unpack_images(self.packed[idx])

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``idx`` as a ``(B, 1, 64, 64)`` float32 tensor of 0/1 on ``device``.

        Only the packed rows (512 bytes per image) are copied to the device; the
        bits are unpacked there with shifts, in the bit order of ``np.packbits``.
        """
        rows = torch.from_numpy(self.packed[idx]).to(device)  # (B, 512) uint8
        bits = (rows.unsqueeze(-1) >> _bit_shifts(rows.device)) & 1  # (B, 512, 8)
        return bits.view(-1, 1, 64, 64).to(torch.float32)


@dataclass
class Split:
    """Training folds and the held-out validation fold of one cross-validation split."""

    train: FoldData
    val: FoldData
    provenance: dict


def load_split(data_cfg: DataConfig) -> Split:
    """Train on the ``k - 1`` other folds, validate on fold ``data_cfg.fold``.

    Builds the cache if needed (:func:`bcvae.data.folds.ensure_cache`) and reads
    each part with contiguous slice reads.

    Raises
    ------
    ValueError
        ``data.k``, ``data.fold`` or ``data.subset`` cannot make a split
        (:func:`bcvae.config.split_problem`); the message names the key.
    DatasetError
        The cache file cannot be read.
    """
    validate_data_config(data_cfg, with_fold=True)

    def read(path: Path) -> tuple[Split, list[int]]:
        offsets = _read(path, lambda f: f["fold_offsets"][...])
        f = data_cfg.fold
        start, stop = int(offsets[f]), int(offsets[f + 1])
        val = _read_rows(path, [(start, stop)])
        train = _read_rows(path, [(0, start), (stop, int(offsets[-1]))])
        others = [j for j in range(len(offsets) - 1) if j != f]
        bad = _damaged_folds(path, offsets, [(val, [f]), (train, others)])
        return Split(train=train, val=val, provenance=provenance(path, fold=f)), bad

    return _verified(data_cfg, read)


def load_all(data_cfg: DataConfig) -> FoldData:
    """Every image of the cache (all folds, fold-major order), for evaluation."""
    def read(path: Path) -> tuple[FoldData, list[int]]:
        offsets = _read(path, lambda f: f["fold_offsets"][...])
        data = _read_rows(path, [(0, int(offsets[-1]))])
        return data, _damaged_folds(path, offsets, [(data, list(range(len(offsets) - 1)))])

    return _verified(data_cfg, read)


def _verified(data_cfg: DataConfig, read):
    """``read(path)`` -> (result, damaged folds); a damaged cache is rebuilt once and read again."""
    path = ensure_cache(data_cfg)
    result, bad = read(path)
    if bad:
        path = rebuild_cache(data_cfg, f"damaged: fold(s) {bad} do not match the sha256 recorded when it was built")
        result, bad = read(path)
        if bad:
            raise DatasetError(f"fold cache {path}: fold(s) {bad} do not match their sha256 right after a "
                               "rebuild; the disk may be failing")
    return result


def _damaged_folds(path: Path, offsets: np.ndarray, parts: list[tuple[FoldData, list[int]]]) -> list[int]:
    """Folds whose rows in ``parts`` (data, the folds it holds in order) differ from the
    sha256 recorded at build time."""
    recorded = fold_digests(read_provenance(path))
    bad = []
    for data, folds in parts:
        pos = 0
        for j in folds:
            n = int(offsets[j + 1] - offsets[j])
            rows = slice(pos, pos + n)
            if fold_digest(data.packed[rows], data.factors[rows], data.index[rows]) != recorded[j]:
                bad.append(j)
            pos += n
    return sorted(bad)


def provenance(path: Path, fold: int | None = None) -> dict:
    """Data provenance for run records: the cache's attributes plus the file (and fold)."""
    info = {key: value for key, value in read_provenance(path).items()
            if key not in ("npz_size", "npz_mtime_ns")}  # bookkeeping, not provenance
    info["cache_file"] = str(path)
    if fold is not None:
        info["fold"] = fold
    return info


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Training order of epoch ``epoch``: a permutation of ``range(n)``, ``(n,)`` int64.

    A pure function of ``(seed, epoch)``, so a run resumed at any epoch sees
    exactly the data order of an uninterrupted run.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


@functools.lru_cache(maxsize=None)
def _bit_shifts(device: torch.device) -> torch.Tensor:
    """``(8,)`` uint8 shifts 7..0 on ``device``: bit j of a packed byte is pixel 7 - j."""
    return torch.arange(7, -1, -1, dtype=torch.uint8, device=device)


def _read_rows(path: Path, ranges: list[tuple[int, int]]) -> FoldData:
    """Concatenate row ranges ``[start, stop)`` of every dataset into one :class:`FoldData`."""
    def read(f: h5py.File) -> FoldData:
        parts = {}
        for name in ("images", "latents_classes", "index"):
            dset = f[name]
            out = np.empty((sum(b - a for a, b in ranges),) + dset.shape[1:], dtype=dset.dtype)
            pos = 0
            for a, b in ranges:
                if b > a:  # read_direct rejects empty selections
                    dset.read_direct(out, np.s_[a:b], np.s_[pos:pos + b - a])
                pos += b - a
            parts[name] = out
        return FoldData(parts["images"], parts["latents_classes"], parts["index"])
    return _read(path, read)


def _read(path: Path, fn):
    """Apply ``fn`` to the open cache file; a read failure becomes a DatasetError naming it."""
    try:
        with h5py.File(path, "r") as f:
            return fn(f)
    except OSError as exc:
        raise DatasetError(f"fold cache {path} could not be read ({exc}); delete it to have "
                           f"it rebuilt") from exc
