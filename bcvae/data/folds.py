"""HDF5 fold cache: dSprites images bit-packed in fold-major order, with provenance.

One file per (source, fold_seed, k, subset) under ``data.cache_dir``. A seeded
permutation of the images (or of a seeded subset of them) is split into ``k``
near-equal folds; each fold is a contiguous slice of the file, so a split is read
with a few sequential reads and then indexed in RAM (random-index reads from a
compressed HDF5 file cost milliseconds per image).

File layout::

    images          (N, 512) uint8   np.packbits of the 64*64 pixels, fold-major order
    latents_classes (N, 6)   int64   factor classes of each stored image
    index           (N,)     int64   index of each stored image in the real file's order
    fold_offsets    (k+1,)   int64   fold f is rows fold_offsets[f]:fold_offsets[f+1]
    attrs: cache_version, source, renderer_version | npz_sha256 (+ npz size/mtime),
           fold_seed, k, subset, n_images, created, fold_sha256 (one digest per fold)

Every fold's content (its packed images, classes and indices) has a sha256 recorded
at build time; the loader checks the folds it reads against it (≈0.3 s for the whole
dataset), so a file whose images were overwritten with its attributes intact is
rebuilt instead of training on whatever it now holds.

The file is built once, atomically (temporary file in the same directory, fsync,
``os.replace``) and under a ``filelock.FileLock``, so concurrent runs (cross-validation
folds, sweep agents) build it once and all read the finished file. A file whose
version or provenance no longer matches, or that cannot be read, is rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import filelock
import h5py
import numpy as np

from bcvae.data.dsprites import file_sha256, load_dsprites_npz
from bcvae.data.render import (
    N_IMAGES,
    RENDERER_VERSION,
    all_latents_classes,
    render_dsprites,
    render_full_dataset,
)

from bcvae.config import SOURCES, split_problem

if TYPE_CHECKING:
    from bcvae.config import DataConfig

log = logging.getLogger("bcvae")

CACHE_VERSION = 2  # bump when the file layout or the fold assignment changes (2: per-fold sha256)
PACKED_BYTES = 64 * 64 // 8  # one image = 4096 pixels = 512 bytes bit-packed
WRITE_BLOCK_ROWS = 65_536  # images written per h5py call (bounds temporary copies)

# Storage of the packed images. Measured on the full 737,280-image procedural set,
# bit-packed (377 MB), fold-major order (k=10, each fold sorted), chunks of 1024
# images, 2-core machine, warm page cache, median of 3:
#
#     filter   file size   write+fsync   read all   read one fold (73,728 images)
#     raw      377.5 MB    0.29 s        0.05 s     ~10-80 ms
#     gzip-1    19.1 MB    0.72 s        0.33 s     34 ms
#     lzf       24.1 MB    0.44 s        0.57 s     58 ms
#
# gzip-1 wins: a twentieth of raw, smaller *and* faster to read than lzf, a split is
# read once per run, and gzip is in every HDF5 build (lzf is h5py-only). gzip-4 gives
# 13.4 MB but reads 3x slower; 4096-image chunks change nothing. Sorting each fold
# matters: the same data in random order is 27.5 MB (gzip-1).
CHUNK_ROWS = 1024
COMPRESSION = "gzip"
COMPRESSION_OPTS = 1

_DATASETS = ("images", "latents_classes", "index", "fold_offsets")


def resolve_source(data_cfg: DataConfig) -> str:
    """Return the concrete image source, ``"dsprites"`` or ``"procedural"``.

    ``"auto"`` means the real npz at ``data_cfg.path`` when that file exists,
    otherwise the procedural renderer. The choice is logged.
    """
    source = _concrete_source(data_cfg)
    if source == "dsprites":
        log.info("data source: real dSprites file %s", data_cfg.path)
    else:
        log.info("data source: procedural renderer version %s", RENDERER_VERSION)
    return source


def _concrete_source(data_cfg: DataConfig) -> str:
    """``resolve_source`` without the log line (used to name the cache file)."""
    if data_cfg.source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data_cfg.source!r}")
    if data_cfg.source == "auto":
        return "dsprites" if Path(data_cfg.path).is_file() else "procedural"
    return data_cfg.source


def validate_data_config(data_cfg: DataConfig, *, with_fold: bool = False) -> None:
    """Raise ``ValueError`` naming the key when ``k``, ``subset`` (or, ``with_fold``, ``fold``)
    cannot make a split; the rules are :func:`bcvae.config.split_problem`'s."""
    problem = split_problem(data_cfg, with_fold=with_fold)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")


def cache_path(data_cfg: DataConfig) -> Path:
    """Path of the cache file for (source, fold_seed, k, subset) under ``data_cfg.cache_dir``."""
    subset = data_cfg.subset or "all"
    name = (f"dsprites_folds_{_concrete_source(data_cfg)}_seed{data_cfg.fold_seed}"
            f"_k{data_cfg.k}_n{subset}.h5")
    return Path(data_cfg.cache_dir) / name


def assign_folds(k: int, fold_seed: int, subset: int = 0,
                 n_total: int = N_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """Seeded image -> fold assignment in fold-major order.

    One permutation of ``range(n_total)`` drawn with ``fold_seed``; its first
    ``subset`` entries (all when ``subset == 0``) are cut into ``k`` near-equal
    folds (sizes differ by at most one). Each fold is sorted so that similar
    neighbouring images share a compression chunk; training order comes from
    ``loader.epoch_order``, not from the file.

    Returns
    -------
    index : (N,) int64, dataset index of each stored image, fold after fold
    fold_offsets : (k + 1,) int64, fold f is ``index[fold_offsets[f]:fold_offsets[f + 1]]``
    """
    perm = np.random.default_rng(fold_seed).permutation(n_total)
    chosen = perm[:subset] if subset else perm
    folds = [np.sort(part) for part in np.array_split(chosen, k)]
    offsets = np.zeros(k + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(part) for part in folds])
    return np.concatenate(folds).astype(np.int64), offsets


def pack_images(imgs: np.ndarray) -> np.ndarray:
    """Bit-pack binary images ``(N, 64, 64)`` uint8 0/1 -> ``(N, 512)`` uint8 (MSB first)."""
    return np.packbits(imgs.reshape(len(imgs), -1), axis=1)


def unpack_images(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_images`: ``(N, 512)`` uint8 -> ``(N, 64, 64)`` uint8 0/1."""
    return np.unpackbits(packed, axis=1).reshape(len(packed), 64, 64)


def read_provenance(path: Path) -> dict:
    """The provenance attributes of a cache file as plain Python values."""
    with h5py.File(path, "r") as f:
        return {key: _plain(value) for key, value in f.attrs.items()}


def _plain(value):
    """numpy scalar / bytes attribute -> int, float or str (JSON- and YAML-friendly)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def ensure_cache(data_cfg: DataConfig) -> Path:
    """Return the path of a valid cache for ``data_cfg``, building it if needed.

    A missing, stale (other version or provenance) or unreadable file is
    (re)built under a file lock; a process that finds the lock taken waits and
    then uses the file the other process built.
    """
    validate_data_config(data_cfg)
    source = resolve_source(data_cfg)
    path = cache_path(data_cfg)
    if _check_cache(path, data_cfg, source) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("waiting for another process to build %s", path)
        lock.acquire()
    try:
        problem = _check_cache(path, data_cfg, source)  # another process may have built it
        if problem is not None:
            if problem != "missing":
                log.warning("fold cache %s is %s; rebuilding it", path, problem)
            _remove_stale_temporaries(path)
            _build(path, data_cfg, source)
    finally:
        lock.release()
    return path


def _check_cache(path: Path, data_cfg: DataConfig, source: str) -> str | None:
    """``None`` when ``path`` is a valid cache for ``data_cfg``, else why it is not."""
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            problem = _check_layout(f, data_cfg)
            attrs = {key: _plain(value) for key, value in f.attrs.items()}
    except (OSError, KeyError, ValueError) as exc:  # truncated or corrupt file
        return f"unreadable ({exc})"
    return problem or _check_provenance(attrs, data_cfg, source, path)


def _check_layout(f: h5py.File, data_cfg: DataConfig) -> str | None:
    """Datasets present with the shapes and dtypes that ``data_cfg`` implies."""
    n = data_cfg.subset or N_IMAGES
    expected = {"images": ((n, PACKED_BYTES), np.uint8),
                "latents_classes": ((n, 6), np.int64),
                "index": ((n,), np.int64),
                "fold_offsets": ((data_cfg.k + 1,), np.int64)}
    for name, (shape, dtype) in expected.items():
        if name not in f:
            return f"missing dataset {name!r}"
        if f[name].shape != shape or f[name].dtype != dtype:
            return (f"wrong dataset {name!r}: {f[name].shape} {f[name].dtype}, "
                    f"expected {shape} {np.dtype(dtype)}")
    offsets = f["fold_offsets"][...]
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
        return f"inconsistent fold_offsets {offsets.tolist()}"
    return None


def _check_provenance(attrs: dict, data_cfg: DataConfig, source: str,
                      path: Path) -> str | None:
    """Version and provenance attributes match ``data_cfg`` and the current source."""
    wanted = {"cache_version": CACHE_VERSION, "source": source, "fold_seed": data_cfg.fold_seed,
              "k": data_cfg.k, "subset": data_cfg.subset}
    if source == "procedural":
        wanted["renderer_version"] = RENDERER_VERSION
    for key, value in wanted.items():
        if attrs.get(key) != value:
            return f"stale ({key} = {attrs.get(key)!r}, expected {value!r})"
    if len(fold_digests(attrs)) != data_cfg.k:
        return "missing its per-fold sha256"
    if source == "dsprites":
        return _check_npz(attrs, Path(data_cfg.path), path)
    return None


def _check_npz(attrs: dict, npz: Path, path: Path) -> str | None:
    """The npz the cache at ``path`` was built from is unchanged.

    Size and mtime are compared first; only when they differ (a copy, a touch, a
    new download) is the 26 MB file hashed. The cache file is never modified in
    place: other processes may be reading it.
    """
    if not npz.is_file():
        log.warning("cannot verify fold cache %s: its source %s is missing; using the cache "
                    "(npz sha256 %s)", path, npz, attrs.get("npz_sha256"))
        return None
    stat = npz.stat()
    if (attrs.get("npz_size"), attrs.get("npz_mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
        return None
    sha = file_sha256(npz)
    if sha != attrs.get("npz_sha256"):
        return f"stale ({npz} has sha256 {sha}, the cache was built from {attrs.get('npz_sha256')})"
    log.info("%s changed size or mtime but not content (sha256 %s)", npz, sha)
    return None


def fold_digest(packed: np.ndarray, classes: np.ndarray, index: np.ndarray) -> str:
    """sha256 of one fold's rows: packed images ``(n, 512)`` uint8, classes ``(n, 6)`` and
    indices ``(n,)`` int64, in stored order."""
    digest = hashlib.sha256()
    for array in (packed, np.asarray(classes, dtype=np.int64), np.asarray(index, dtype=np.int64)):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def fold_digests(attrs: dict) -> list[str]:
    """The per-fold sha256 a cache's attributes (:func:`read_provenance`) recorded at build time."""
    value = str(attrs.get("fold_sha256", ""))
    return value.split(",") if value else []


def rebuild_cache(data_cfg: DataConfig, reason: str) -> Path:
    """Rebuild the cache of ``data_cfg`` (under its lock) because of ``reason``; returns its path."""
    path = cache_path(data_cfg)
    log.warning("fold cache %s is %s; rebuilding it", path, reason)
    with filelock.FileLock(str(path) + ".lock"):
        _remove_stale_temporaries(path)
        _build(path, data_cfg, resolve_source(data_cfg))
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of builds that died; called with the lock held, so none is live."""
    for tmp in path.parent.glob(path.name + ".tmp-*"):
        tmp.unlink(missing_ok=True)


def _build(path: Path, data_cfg: DataConfig, source: str) -> None:
    """Assign folds, load or render the images, and write the cache atomically."""
    start = time.perf_counter()
    index, offsets = assign_folds(data_cfg.k, data_cfg.fold_seed, data_cfg.subset)
    log.info("building fold cache %s (%d images, k=%d)", path, len(index), data_cfg.k)
    if source == "procedural":
        packed, classes = _procedural_images(index)
        attrs = {"renderer_version": RENDERER_VERSION}
    else:
        packed, classes, attrs = _npz_images(Path(data_cfg.path), index)
    attrs.update(cache_version=CACHE_VERSION, source=source, fold_seed=data_cfg.fold_seed,
                 k=data_cfg.k, subset=data_cfg.subset, n_images=len(index),
                 created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 fold_sha256=",".join(fold_digest(packed[a:b], classes[a:b], index[a:b])
                                      for a, b in zip(offsets[:-1], offsets[1:])))
    arrays = {"images": packed, "latents_classes": classes, "index": index,
              "fold_offsets": offsets}
    _write_atomic(path, arrays, attrs)
    log.info("built fold cache %s in %.1f s (%.1f MB)", path, time.perf_counter() - start,
             path.stat().st_size / 1e6)


def _procedural_images(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed images ``(N, 512)`` and classes ``(N, 6)`` of the rendered images ``index``."""
    if len(index) < N_IMAGES:  # a subset: render only what is stored
        classes = all_latents_classes()[index]
        return pack_images(render_dsprites(classes)), classes
    imgs, all_classes, _ = render_full_dataset(progress=True)
    packed = pack_images(imgs)
    del imgs  # 3 GB; the packed copy is 377 MB
    return packed[index], np.asarray(all_classes, dtype=np.int64)[index]


def _npz_images(npz: Path, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Packed images, classes and provenance attributes of images ``index`` of the real file."""
    if not npz.is_file():
        load_dsprites_npz(npz)  # raises DatasetError: file not found, and where to get it
    stat = npz.stat()  # before reading: a later change then shows up as a changed mtime
    imgs, all_classes, _ = load_dsprites_npz(npz)
    if len(index) < len(imgs):
        packed = pack_images(imgs[index])
    else:
        packed = pack_images(imgs)[index]
    attrs = {"npz_sha256": file_sha256(npz), "npz_size": stat.st_size,
             "npz_mtime_ns": stat.st_mtime_ns, "npz_path": str(npz)}
    return packed, np.asarray(all_classes, dtype=np.int64)[index], attrs


def _write_atomic(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write ``arrays`` and ``attrs`` to ``path`` so that ``path`` is either absent or complete.

    Raises
    ------
    OSError
        errno ENOSPC with a message naming the directory when the disk fills up;
        no partial file is left behind.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        # HDF5 builds the file in memory, then one plain write puts it on disk: HDF5 itself
        # turns a full disk into a RuntimeError and can crash the interpreter at exit.
        with open(tmp, "wb") as out:
            image = io.BytesIO()
            with h5py.File(image, "w") as f:
                _write_datasets(f, arrays)
                f.attrs.update(attrs)
            out.write(image.getbuffer())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # make the rename itself durable
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            need = sum(a.nbytes for a in arrays.values()) / 1e6
            raise OSError(errno.ENOSPC, f"no space left on device in {path.parent} while "
                          f"writing the fold cache {path.name} (up to {need:.0f} MB "
                          f"uncompressed); free space there or set data.cache_dir") from exc
        raise


def _write_datasets(f: h5py.File, arrays: dict[str, np.ndarray]) -> None:
    """Create the datasets; images chunked and compressed, written block by block."""
    images = arrays["images"]
    dset = f.create_dataset("images", shape=images.shape, dtype=np.uint8,
                            chunks=(min(CHUNK_ROWS, len(images)), PACKED_BYTES),
                            compression=COMPRESSION, compression_opts=COMPRESSION_OPTS)
    for start in range(0, len(images), WRITE_BLOCK_ROWS):
        dset[start:start + WRITE_BLOCK_ROWS] = images[start:start + WRITE_BLOCK_ROWS]
    for name in _DATASETS[1:]:  # int64 columns of small values: shuffle + gzip, 41 MB -> 2 MB
        f.create_dataset(name, data=np.asarray(arrays[name], dtype=np.int64), shuffle=True,
                         compression=COMPRESSION, compression_opts=COMPRESSION_OPTS)


def _fsync(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
