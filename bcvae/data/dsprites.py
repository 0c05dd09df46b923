"""The real dSprites file: download, validate, checksum, compare with the renderer.

dSprites (Matthey et al. 2017, https://github.com/deepmind/dsprites-dataset)
ships as one ``.npz`` archive with ``imgs`` (737280, 64, 64) uint8 0/1,
``latents_classes`` (737280, 6) int64, ``latents_values`` (737280, 6) float64
and a pickled ``metadata`` dict. Pickles are never loaded: ``metadata`` is not
read (``bcvae.data.render`` derives the same facts), and every array is read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bcvae.errors import DatasetError

from .render import (
    FACTOR_NAMES,
    IMAGE_SIZE,
    RENDERER_VERSION,
    SHAPE_NAMES,
    all_latents_classes,
    latents_values,
    render_dsprites,
)

DSPRITES_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/deepmind/dsprites-dataset/raw/master/{DSPRITES_FILENAME}"

# Expected layout of each array: trailing shape (after the image count) and dtype.
_LAYOUT = {
    "imgs": ((IMAGE_SIZE, IMAGE_SIZE), np.dtype(np.uint8)),
    "latents_classes": ((len(FACTOR_NAMES),), np.dtype(np.int64)),
    "latents_values": ((len(FACTOR_NAMES),), np.dtype(np.float64)),
}
# What a failed download raises (disk errors are left to propagate as they are).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
# What reading a damaged archive member can raise.
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an ``.npz`` archive without loading any member; pickles stay disabled."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found. Download {DSPRITES_FILENAME} from {DSPRITES_URL} "
            f"and put it at this path."
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DatasetError(f"{path}: not an .npz (zip) archive: truncated or corrupt")
    try:
        return np.load(path, allow_pickle=False)
    except _CORRUPT as err:
        raise DatasetError(f"{path}: truncated or corrupt .npz archive ({err})") from None


def _member_header(path: Path, npz: np.lib.npyio.NpzFile, key: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of one member, read from its ``.npy`` header (no data decoded)."""
    try:
        with npz.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except _CORRUPT as err:
        raise DatasetError(f"{path}: member '{key}' is truncated or corrupt ({err})") from None
    return shape, dtype


def _check_headers(path: Path, npz: np.lib.npyio.NpzFile, n_images: int) -> None:
    """Check that `imgs` and the latents exist with the dSprites shapes and dtypes."""
    for key, (trailing, dtype) in _LAYOUT.items():
        if key not in npz.files:
            raise DatasetError(
                f"{path}: missing array '{key}' (the file holds {sorted(npz.files)}); "
                f"not the dSprites archive {DSPRITES_FILENAME}"
            )
        shape, found = _member_header(path, npz, key)
        if found.hasobject:
            raise DatasetError(f"{path}: '{key}' holds pickled objects; refusing to load it")
        if shape != (n_images, *trailing):
            expected = (n_images, *trailing)
            raise DatasetError(f"{path}: '{key}' has shape {shape}, expected {expected}")
        if found != dtype:
            raise DatasetError(f"{path}: '{key}' has dtype {found}, expected {dtype}")


def _read_member(path: Path, npz: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """Decode one member; a damaged archive raises DatasetError."""
    try:
        return npz[key]
    except _CORRUPT as err:
        raise DatasetError(f"{path}: '{key}' is truncated or corrupt ({err})") from None


def _check_contents(
    path: Path, imgs: np.ndarray, classes: np.ndarray, values: np.ndarray, grid: np.ndarray
) -> None:
    """Check binary images, the latent grid in order, and values matching the classes."""
    # max() on uint8 reads the 3 GB once, far cheaper than np.unique; with the
    # dtype fixed to uint8, max <= 1 means every pixel is 0 or 1.
    top = int(imgs.max(initial=0))
    if top > 1:
        raise DatasetError(f"{path}: 'imgs' holds values up to {top}; dSprites pixels are 0 or 1")
    if top == 0:
        raise DatasetError(f"{path}: 'imgs' is blank (every pixel 0)")
    wrong = np.flatnonzero((classes != grid).any(axis=1))
    if len(wrong):
        row = int(wrong[0])
        raise DatasetError(
            f"{path}: 'latents_classes' row {row} is {classes[row].tolist()}, expected "
            f"{grid[row].tolist()}: not every latent combination in the dSprites order"
        )
    error = np.abs(values - latents_values(classes))
    if not error.max(initial=0.0) <= 1e-6:  # also catches NaN
        row, col = np.unravel_index(int(np.argmax(np.nan_to_num(error, nan=np.inf))), error.shape)
        raise DatasetError(
            f"{path}: 'latents_values'[{row}, {col}] ({FACTOR_NAMES[col]}) is "
            f"{float(values[row, col])!r}, expected "
            f"{float(latents_values(classes[row : row + 1])[0, col])!r}"
        )


def load_dsprites_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load and validate the real dSprites archive.

    Parameters
    ----------
    path : path of ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``

    Returns
    -------
    imgs : (737280, 64, 64) uint8, 0/1
    latents_classes : (737280, 6) int64, equal to ``all_latents_classes()``
    latents_values : (737280, 6) float64

    Raises
    ------
    DatasetError
        Naming the file and the problem: missing, truncated or corrupt, a
        foreign archive, wrong shape or dtype, non-binary pixels, latents not
        the dSprites grid in order. ``metadata`` is never read.
    """
    path = Path(path)
    grid = all_latents_classes()
    with _open_npz(path) as npz:
        _check_headers(path, npz, len(grid))
        imgs, classes, values = (_read_member(path, npz, key) for key in _LAYOUT)
    _check_contents(path, imgs, classes, values, grid)
    return imgs, classes, values


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path, progress: bool) -> None:
    """Stream `url` into the file `target`, with a byte progress bar."""
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="dSprites", disable=not progress)
        with bar:
            while block := response.read(1 << 20):
                f.write(block)
                bar.update(len(block))


def download_dsprites(
    dest_dir: str | os.PathLike,
    url: str = DSPRITES_URL,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download the dSprites archive into `dest_dir` and validate it.

    The file is streamed into a temporary file beside the destination, checked
    (sha256 when `expected_sha256` is given, then structure with
    `load_dsprites_npz`) and only then renamed into place, so an interrupted
    or bad download never leaves a file under the final name. An existing
    file is validated and returned without downloading.

    Returns
    -------
    Path of ``dest_dir / DSPRITES_FILENAME``.
    """
    dest = Path(dest_dir) / DSPRITES_FILENAME
    if dest.exists():
        try:
            load_dsprites_npz(dest)
        except DatasetError as err:
            raise DatasetError(f"{err}. Delete it to download it again.") from None
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the final rename is atomic; the pid keeps concurrent downloads apart.
    part = dest.with_name(f".{DSPRITES_FILENAME}.{os.getpid()}.part")
    try:
        try:
            _fetch(url, part, progress)
        except _NETWORK_ERRORS as err:
            raise DatasetError(
                f"could not download {url} ({getattr(err, 'reason', err)}). No network? "
                f"On a machine with internet access, download {DSPRITES_FILENAME} from that "
                f"address and copy it to {dest}."
            ) from None
        _verify_download(part, url, expected_sha256)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _verify_download(part: Path, url: str, expected_sha256: str | None) -> None:
    """Check a downloaded file's checksum (if known) and structure."""
    if expected_sha256 is not None:
        found = file_sha256(part)
        if found != expected_sha256.lower():
            raise DatasetError(f"download from {url}: sha256 {found}, expected {expected_sha256}")
    try:
        load_dsprites_npz(part)
    except DatasetError as err:
        raise DatasetError(f"download from {url} is not the dSprites archive: {err}") from None


def _sample(n: int, limit: int | None) -> np.ndarray:
    """All indices, or `limit` evenly spread ones (every shape and scale represented)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def compare_renderer(
    path: str | os.PathLike, limit: int | None = None, chunk: int = 8192, progress: bool = False
) -> dict:
    """Compare the procedural renderer with the real dSprites images.

    Parameters
    ----------
    path : the real archive (validated with `load_dsprites_npz`)
    limit : compare this many images spread evenly over the file; None = all
    chunk : images rendered per step (memory ~ 4 KB per image)

    Returns
    -------
    dict with ``n_images``, ``n_images_differing``, ``n_pixels_differing``,
    ``max_pixels_differing_in_one_image``, ``worst_index`` (file index of that
    image; None when all agree), ``path``, ``renderer_version`` and
    ``per_shape`` (``square`` / ``ellipse`` / ``heart`` -> the three counts).
    """
    imgs, classes, _ = load_dsprites_npz(path)
    index = _sample(len(imgs), limit)
    wrong = np.zeros(len(index), dtype=np.int64)  # differing pixels per compared image
    for start in tqdm(range(0, len(index), chunk), desc="comparing", disable=not progress):
        part = index[start : start + chunk]
        differs = render_dsprites(classes[part]) != imgs[part]
        wrong[start : start + len(part)] = differs.sum(axis=(1, 2))
    shapes = classes[index, 1]
    per_shape = {name: _counts(wrong[shapes == s]) for s, name in enumerate(SHAPE_NAMES)}
    most = int(wrong.max(initial=0))
    return {
        "path": str(path),
        "renderer_version": RENDERER_VERSION,
        **_counts(wrong),
        "max_pixels_differing_in_one_image": most,
        "worst_index": int(index[np.argmax(wrong)]) if most else None,
        "per_shape": per_shape,
    }


def _counts(wrong: np.ndarray) -> dict:
    """Image and pixel counts from differing pixels per image `(n,)`."""
    return {
        "n_images": int(len(wrong)),
        "n_images_differing": int(np.count_nonzero(wrong)),
        "n_pixels_differing": int(wrong.sum()),
    }
