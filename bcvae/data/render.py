"""Procedural dSprites: render any image of the dataset from its latent classes.

The recipe was measured on real dSprites frames (see ``DSPRITES.md`` in the
project notes): each pixel centre is mapped back into the sprite's unit-scale
frame by undoing position, rotation and scale, and the pixel is on exactly
when that point lies inside the shape's outline. No anti-aliasing, no noise.

Factor order, values and image order follow the real file
``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (Matthey et al. 2017):
C order over ``FACTOR_SIZES``, posY varying fastest.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

import numpy as np
from tqdm import tqdm

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
N_IMAGES = 737_280
RENDERER_VERSION = "1"  # bump whenever any rendered pixel changes
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


# The exact float values stored in the real file's `latents_values`.
FACTOR_VALUES = (
    _read_only(np.array([1.0])),
    _read_only(np.array([1.0, 2.0, 3.0])),
    _read_only(np.linspace(0.5, 1.0, 6)),
    _read_only(np.linspace(0.0, 2.0 * np.pi, 40)),
    _read_only(np.linspace(0.0, 1.0, 32)),
    _read_only(np.linspace(0.0, 1.0, 32)),
)

# Unit-scale outlines, in pixels at scale 1.
_SQUARE_HALF_SIDE = 9.6
_ELLIPSE_SEMI_AXES = (12.76, 7.215)  # horizontal, vertical at orientation 0
# libm cos/sin of the 40 angles: 40 values, so no need for numpy's vectorised
# versions, whose last bit can differ between CPUs.
_COS = np.array([math.cos(t) for t in FACTOR_VALUES[3]])
_SIN = np.array([math.sin(t) for t in FACTOR_VALUES[3]])
# Window pixels per vectorised step: the float64 temporaries (~0.5 MB each)
# stay in cache, about twice as fast as steps of 4M pixels.
_ELEMENTS_PER_STEP = 1 << 16


def _check_classes(latents_classes: np.ndarray) -> np.ndarray:
    """Validate latent classes, shape `(N, 6)`, and return them as int64."""
    classes = np.asarray(latents_classes)
    if classes.ndim != 2 or classes.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"latents_classes must have shape (N, 6), got {classes.shape}")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"latents_classes must be integers, got dtype {classes.dtype}")
    classes = classes.astype(np.int64, copy=False)
    for j, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
        bad = (classes[:, j] < 0) | (classes[:, j] >= size)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"latents_classes[{row}, {j}] ({name}) = {classes[row, j]} "
                f"is outside 0..{size - 1}"
            )
    return classes


def latents_values(latents_classes: np.ndarray) -> np.ndarray:
    """Map latent classes `(N, 6)` int to the real file's latent values `(N, 6)` float64."""
    classes = _check_classes(latents_classes)
    columns = [FACTOR_VALUES[j][classes[:, j]] for j in range(len(FACTOR_SIZES))]
    return np.stack(columns, axis=1)


def all_latents_classes() -> np.ndarray:
    """Every latent combination once, in the real file's order: `(737280, 6)` int64."""
    grid = np.indices(FACTOR_SIZES, dtype=np.int64).reshape(len(FACTOR_SIZES), -1)
    return np.ascontiguousarray(grid.T)


@functools.lru_cache(maxsize=1)
def _heart_vertices() -> np.ndarray:
    """Heart outline `(V, 2)` in pixels at scale 1 (x right, y down, origin at the centre)."""
    source = resources.files(__package__).joinpath("heart_outline.json")
    vertices = np.array(json.loads(source.read_text())["vertices"], dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise ValueError(f"{source}: 'vertices' must be a list of at least 3 [x, y] pairs")
    return _read_only(vertices)


@functools.lru_cache(maxsize=1)
def _heart_edges() -> tuple[np.ndarray, ...]:
    """Half-planes of the heart polygon plus an angle -> edge lookup table.

    The outline is star-shaped about its centre (vertex angles increase
    strictly around it), so a point is inside exactly when it lies on the
    centre's side of the one edge spanning its angle. The table's bins are
    narrower than the smallest angle between vertices, so each bin holds at
    most one vertex and one comparison picks the edge.

    Returns
    -------
    a, b, c : (E,) float64; a point is inside when ``a*u + b*v >= c``
    first, split, second : (K+1,) the edge at a bin's start, the angle of the
        vertex inside the bin (+inf if none) and the edge after that vertex
    """
    p = _heart_vertices()
    angle = np.arctan2(p[:, 1], p[:, 0])
    start = int(np.argmin(angle))
    p, angle = np.roll(p, -start, axis=0), np.roll(angle, -start)
    if np.any(np.diff(angle) <= 0):
        raise ValueError("heart_outline.json: the outline is not star-shaped about its centre")
    q = np.roll(p, -1, axis=0)  # edge e runs from p[e] to q[e], counter-clockwise
    a, b = p[:, 1] - q[:, 1], q[:, 0] - p[:, 0]
    c = q[:, 0] * p[:, 1] - q[:, 1] * p[:, 0]
    n_bins = 1 << (int(np.ceil(np.log2(2 * np.pi / np.diff(angle).min()))) + 1)
    width = 2 * np.pi / n_bins
    bin_start = -np.pi + width * np.arange(n_bins + 1)
    first = (np.searchsorted(angle, bin_start, side="right") - 1) % len(p)
    after = (first + 1) % len(p)
    in_bin = (angle[after] >= bin_start) & (angle[after] < bin_start + width)
    split = np.where(in_bin, angle[after], np.inf)
    second = np.where(in_bin, after, first)
    return a, b, c, first, split, second


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-heart test for unit-scale points `u, v` (same shape; x right, y down)."""
    a, b, c, first, split, second = _heart_edges()
    n_bins = len(first) - 1
    angle = np.arctan2(v, u)
    bins = ((angle + np.pi) * (n_bins / (2 * np.pi))).astype(np.intp)
    np.clip(bins, 0, n_bins, out=bins)
    edge = np.where(angle >= split[bins], second[bins], first[bins])
    return a[edge] * u + b[edge] * v >= c[edge]


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether unit-scale points `(u, v)` lie inside the outline; overwrites `u, v`."""
    if shape == 0:  # square: max(|u|, |v|) <= half side
        return np.maximum(np.abs(u, out=u), np.abs(v, out=v)) <= _SQUARE_HALF_SIDE
    if shape == 1:  # ellipse: (u/a)^2 + (v/b)^2 <= 1
        np.divide(u, _ELLIPSE_SEMI_AXES[0], out=u)
        np.divide(v, _ELLIPSE_SEMI_AXES[1], out=v)
        return np.square(u, out=u) + np.square(v, out=v) <= 1.0
    return _inside_heart(u, v)


def _reach(shape: int) -> float:
    """Largest distance from the centre to the outline at scale 1, in pixels."""
    if shape == 0:
        return _SQUARE_HALF_SIDE * math.sqrt(2.0)
    if shape == 1:
        return max(_ELLIPSE_SEMI_AXES)
    vertices = _heart_vertices()  # a polygon's farthest point is one of its vertices
    return float(np.hypot(vertices[:, 0], vertices[:, 1]).max())


def _window(shape: int, scale: float) -> tuple[int, int]:
    """Margin before the centre pixel and width of a window holding every on pixel.

    Pixel c is on only if its centre lies within reach R of the sprite centre
    cx: ceil(cx - R - 1/2) <= c <= floor(cx + R - 1/2). Starting the window at
    floor(cx) - ceil(R + 1/2) with width ceil(R + 1/2) + ceil(R + 3/2) covers
    that range for every fractional part of cx. The 1e-6 guards rounding.
    """
    radius = _reach(shape) * scale + 1e-6
    before = math.ceil(radius + 0.5)
    return before, before + math.ceil(radius + 1.5)


def _draw(out: np.ndarray, rows: np.ndarray, classes: np.ndarray) -> None:
    """Draw sprites that share shape and scale into the zeroed `out` `(n, 64, 64)` uint8.

    `rows` `(m,)` are the images of `out` to draw, `classes` `(m, 6)` their latents.
    Only a window around each centre is evaluated, in unit-scale coordinates
    ``u = (cos t dx - sin t dy) / s``, ``v = (sin t dx + cos t dy) / s``.
    """
    shape, scale = int(classes[0, 1]), float(FACTOR_VALUES[2][classes[0, 2]])
    before, width = _window(shape, scale)
    cx = 16.0 + 32.0 * FACTOR_VALUES[4][classes[:, 4]]  # column of the centre
    cy = 16.0 + 32.0 * FACTOR_VALUES[5][classes[:, 5]]  # row of the centre
    c0 = np.floor(cx).astype(np.intp) - before
    r0 = np.floor(cy).astype(np.intp) - before
    if c0.min() < 0 or r0.min() < 0 or max(c0.max(), r0.max()) + width > IMAGE_SIZE:
        raise RuntimeError("sprite window leaves the 64x64 canvas")  # cannot happen on the grid
    step = np.arange(width)
    dx = ((c0[:, None] + step) + 0.5 - cx[:, None])[:, None, :]  # (m, 1, W) pixel centre - cx
    dy = ((r0[:, None] + step) + 0.5 - cy[:, None])[:, :, None]  # (m, W, 1)
    cos = _COS[classes[:, 3]][:, None, None]
    sin = _SIN[classes[:, 3]][:, None, None]
    u = cos * dx - sin * dy
    v = sin * dx + cos * dy
    inside = _inside(shape, np.divide(u, scale, out=u), np.divide(v, scale, out=v))
    corner = rows * IMAGE_SIZE**2 + r0 * IMAGE_SIZE + c0  # flat index of window[0, 0]
    flat = corner[:, None, None] + (step[:, None] * IMAGE_SIZE + step)
    out.reshape(-1)[flat] = inside


def _render_into(out: np.ndarray, classes: np.ndarray) -> None:
    """Render validated `classes` `(n, 6)` into the zeroed `out` `(n, 64, 64)` uint8."""
    group = classes[:, 1] * FACTOR_SIZES[2] + classes[:, 2]
    for key in np.unique(group):
        rows = np.flatnonzero(group == key)
        shape, scale_index = divmod(int(key), FACTOR_SIZES[2])
        width = _window(shape, float(FACTOR_VALUES[2][scale_index]))[1]
        per_step = max(1, _ELEMENTS_PER_STEP // width**2)
        for start in range(0, len(rows), per_step):
            part = rows[start : start + per_step]
            _draw(out, part, classes[part])


def render_dsprites(latents_classes: np.ndarray) -> np.ndarray:
    """Render dSprites images from their latent classes.

    Parameters
    ----------
    latents_classes : (N, 6) int
        Class index of each factor, columns in ``FACTOR_NAMES`` order.

    Returns
    -------
    (N, 64, 64) uint8
        Binary images (0 background, 1 sprite), as in the real file.
    """
    classes = _check_classes(latents_classes)
    out = np.zeros((len(classes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    _render_into(out, classes)
    return out


def sprite_area(images: np.ndarray) -> np.ndarray:
    """Pixels each sprite covers, ``(N,)`` int64, of binary images ``(N, 64, 64)``: at one scale a
    square covers more than an ellipse, an ellipse more than a heart."""
    return images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)


def render_full_dataset(progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render all 737,280 dSprites images in the real file's order.

    Returns
    -------
    imgs : (737280, 64, 64) uint8, 0/1 (3.0 GB)
    latents_classes : (737280, 6) int64
    latents_values : (737280, 6) float64
    """
    classes = all_latents_classes()
    imgs = np.zeros((N_IMAGES, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    chunk = 4096  # one shape and scale per chunk: 40 * 32 * 32 is a multiple
    with tqdm(total=N_IMAGES, unit="img", desc="rendering dSprites", disable=not progress) as bar:
        for start in range(0, N_IMAGES, chunk):
            _render_into(imgs[start : start + chunk], classes[start : start + chunk])
            bar.update(min(chunk, N_IMAGES - start))
    return imgs, classes, latents_values(classes)
