"""Procedural dSprites renderer against real frames and independently known facts."""

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon

from bcvae.data.render import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    N_IMAGES,
    all_latents_classes,
    latents_values,
    render_dsprites,
    render_full_dataset,
)

# Real dSprites frames live beside the repository (../shared), never inside it.
REF_DIR = Path(__file__).resolve().parents[2] / "shared" / "dsprites_ref"
PACKAGE_HEART = Path(__file__).resolve().parents[1] / "bcvae" / "data" / "heart_outline.json"


def _reference(name: str) -> Path:
    path = REF_DIR / name
    if not path.exists():
        pytest.skip(f"reference dSprites frames not available ({path} is absent)")
    return path


def _classes(shape=0, scale=5, orientation=0, pos_x=0, pos_y=0) -> np.ndarray:
    return np.array([[0, shape, scale, orientation, pos_x, pos_y]])


def test_reference_frames_match_within_20_pixels():
    ref = np.load(_reference("gif_frames.npz"), allow_pickle=False)
    imgs = render_dsprites(ref["latents_classes"])
    assert len(imgs) == 320
    assert int((imgs != ref["imgs"]).sum()) <= 20


def test_latents_values_equal_the_real_file():
    ref = np.load(_reference("gif_frames.npz"), allow_pickle=False)
    np.testing.assert_array_equal(latents_values(ref["latents_classes"]), ref["latents_values"])


def test_packaged_heart_outline_is_the_measured_one():
    measured = json.loads(_reference("heart_outline.json").read_text())["vertices"]
    assert json.loads(PACKAGE_HEART.read_text())["vertices"] == measured


# DSPRITES.md, measured on real images at orientation 0, posX = posY = 0:
# (width, height, on pixels) for scales 0.5, 0.6, ..., 1.0.
SIZE_TABLE = {
    "square": [
        (10, 10, 100), (12, 12, 144), (14, 14, 196), (16, 16, 256), (18, 18, 324), (20, 20, 400)
    ],
    "ellipse": [
        (12, 8, 76), (16, 8, 104), (18, 10, 144), (20, 12, 184), (22, 12, 228), (26, 14, 288)
    ],
    "heart": [
        (10, 9, 58), (12, 11, 84), (14, 13, 108), (16, 14, 140), (18, 15, 182), (20, 17, 222)
    ],
}


@pytest.mark.parametrize("shape", range(3), ids=list(SIZE_TABLE))
def test_sizes_match_measured_table(shape):
    for scale, expected in enumerate(list(SIZE_TABLE.values())[shape]):
        img = render_dsprites(_classes(shape, scale))[0]
        rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
        found = (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1, int(img.sum()))
        assert found == expected, f"shape {shape}, scale index {scale}"


def test_grid_order_is_c_order_with_pos_y_fastest():
    grid = all_latents_classes()
    assert grid.shape == (N_IMAGES, 6) and grid.dtype == np.int64
    assert np.prod(FACTOR_SIZES) == N_IMAGES and len(FACTOR_NAMES) == 6
    expected = np.stack(np.unravel_index(np.arange(N_IMAGES), FACTOR_SIZES), axis=1)
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(np.ravel_multi_index(grid.T, FACTOR_SIZES), np.arange(N_IMAGES))
    np.testing.assert_array_equal(grid[1], [0, 0, 0, 0, 0, 1])  # posY varies fastest


def test_latents_values_of_extreme_classes():
    classes = np.array([[0, 0, 0, 0, 0, 0], [0, 2, 5, 39, 31, 31], [0, 1, 1, 20, 16, 3]])
    values = latents_values(classes)
    np.testing.assert_allclose(values[0], [1, 1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(values[1], [1, 3, 1.0, 2 * np.pi, 1, 1])
    np.testing.assert_allclose(values[2], [1, 2, 0.6, 2 * np.pi * 20 / 39, 16 / 31, 3 / 31])
    assert values.dtype == np.float64


# Outline areas at scale 1 (DSPRITES.md): square side 19.2, ellipse semi-axes
# 12.76 x 7.215, heart about 224 px^2.
AREA = np.array([19.2**2, np.pi * 12.76 * 7.215, 224.0])


def test_images_are_binary_uint8_with_the_outline_area():
    rng = np.random.default_rng(0)
    classes = all_latents_classes()[rng.choice(N_IMAGES, 2000, replace=False)]
    imgs = render_dsprites(classes)
    assert imgs.shape == (2000, 64, 64) and imgs.dtype == np.uint8
    assert set(np.unique(imgs)) == {0, 1}
    # Pixel-centre sampling counts about area * scale^2 on pixels, whatever the pose.
    area = AREA[classes[:, 1]] * latents_values(classes)[:, 2] ** 2
    np.testing.assert_allclose(imgs.reshape(2000, -1).sum(axis=1), area, rtol=0.15)


def test_orientation_39_equals_orientation_0():
    grid = all_latents_classes()
    first = grid[(grid[:, 3] == 0) & (grid[:, 4] % 5 == 0)]
    last = first.copy()
    last[:, 3] = 39
    np.testing.assert_array_equal(render_dsprites(first), render_dsprites(last))


def _centroid(imgs: np.ndarray, axis: int) -> np.ndarray:
    """Mean pixel-centre coordinate of the on pixels along columns (axis=2) or rows (axis=1)."""
    coords = np.arange(64) + 0.5
    profile = imgs.sum(axis=3 - axis)
    return (profile * coords).sum(axis=1) / profile.sum(axis=1)


@pytest.mark.parametrize("column", [4, 5], ids=["posX moves right", "posY moves down"])
def test_position_steps_move_about_one_pixel(column):
    classes = np.repeat(_classes(shape=0, scale=2), 32, axis=0)
    classes[:, column] = np.arange(32)
    centre = _centroid(render_dsprites(classes), axis=2 if column == 4 else 1)
    assert np.all(np.diff(centre) >= 0)
    np.testing.assert_allclose(np.diff(centre).mean(), 32 / 31)
    np.testing.assert_allclose(centre, 16 + 32 * np.arange(32) / 31, atol=0.5)


def test_whole_pixel_translation_shifts_the_image_exactly():
    grid = all_latents_classes()
    left = grid[(grid[:, 4] == 0) & (grid[:, 5] == 7) & (grid[:, 3] % 3 == 0)]
    right = left.copy()
    right[:, 4] = 31  # centre column 16 -> 48
    shifted = np.roll(render_dsprites(left), 32, axis=2)
    np.testing.assert_array_equal(shifted, render_dsprites(right))
    top = grid[(grid[:, 5] == 0) & (grid[:, 4] == 11) & (grid[:, 3] % 3 == 1)]
    bottom = top.copy()
    bottom[:, 5] = 31  # centre row 16 -> 48
    shifted = np.roll(render_dsprites(top), 32, axis=1)
    np.testing.assert_array_equal(shifted, render_dsprites(bottom))


def _brute_force(classes: np.ndarray) -> np.ndarray:
    """The DSPRITES.md recipe over the whole 64x64 canvas, one image at a time."""
    heart = Polygon(np.array(json.loads(PACKAGE_HEART.read_text())["vertices"]))
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    out = []
    for _, shape, scale, orient, pos_x, pos_y in latents_values(classes):
        dx, dy = cols - (16 + 32 * pos_x), rows - (16 + 32 * pos_y)
        u = (np.cos(orient) * dx - np.sin(orient) * dy) / scale
        v = (np.sin(orient) * dx + np.cos(orient) * dy) / scale
        if shape == 1:
            on = np.maximum(abs(u), abs(v)) <= 9.6
        elif shape == 2:
            on = (u / 12.76) ** 2 + (v / 7.215) ** 2 <= 1
        else:
            on = heart.contains_points(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(64, 64)
        out.append(on)
    return np.array(out, dtype=np.uint8)


def test_windowed_renderer_equals_whole_canvas_recipe():
    rng = np.random.default_rng(1)
    classes = all_latents_classes()[rng.choice(N_IMAGES, 300, replace=False)]
    # Extremes of position and size, where a too-small window would clip the sprite.
    corners = [
        [0, s, 5, o, x, y] for s in range(3) for o in (4, 5, 15) for x in (0, 31) for y in (0, 31)
    ]
    classes = np.concatenate([classes, corners])
    differing = int((render_dsprites(classes) != _brute_force(classes)).sum())
    assert differing <= 2  # only points within rounding of an edge may disagree


def test_rotation_turns_counter_clockwise_on_screen():
    hearts = np.concatenate([_classes(2, 5, 0, 15, 15), _classes(2, 5, 10, 15, 15)])
    upright, turned = render_dsprites(hearts)
    centre = 16 + 32 * 15 / 31
    # The heart's lobes (its heavier half) point up at orientation 0 ...
    assert _centroid(upright[None], axis=1)[0] < centre - 1
    # ... and to the left after a quarter turn (orientation 10 of 40 is ~92 degrees).
    assert _centroid(turned[None], axis=2)[0] < centre - 1
    ellipse = render_dsprites(_classes(1, 5, 10))[0]
    assert ellipse.any(axis=1).sum() > ellipse.any(axis=0).sum()  # major axis now vertical


def test_result_does_not_depend_on_order_or_batching():
    rng = np.random.default_rng(2)
    classes = all_latents_classes()[rng.choice(N_IMAGES, 500, replace=False)]
    together = render_dsprites(classes)
    perm = rng.permutation(500)
    np.testing.assert_array_equal(render_dsprites(classes[perm]), together[perm])
    np.testing.assert_array_equal(render_dsprites(classes[:1])[0], together[0])
    assert render_dsprites(np.zeros((0, 6), dtype=np.int64)).shape == (0, 64, 64)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (np.array([[0, 3, 0, 0, 0, 0]]), "(shape) = 3"),
        (np.array([[0, 0, 0, 0, 0, -1]]), "(posY) = -1"),
        (np.array([[0, 0, 0, 40, 0, 0]]), "(orientation) = 40"),
        (np.zeros((2, 5), dtype=int), "shape (N, 6)"),
        (np.zeros((2, 6), dtype=float), "integers"),
    ],
)
def test_bad_classes_are_rejected_by_name(classes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_dsprites(classes)
    with pytest.raises(ValueError):
        latents_values(classes)


@pytest.mark.slow
def test_full_dataset_in_file_order():
    imgs, classes, values = render_full_dataset(progress=False)
    assert imgs.shape == (N_IMAGES, 64, 64) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(classes, all_latents_classes())
    np.testing.assert_array_equal(values, latents_values(classes))
    sample = np.random.default_rng(3).choice(N_IMAGES, 3000, replace=False)
    np.testing.assert_array_equal(imgs[sample], render_dsprites(classes[sample]))
    assert imgs.max() == 1 and imgs.reshape(N_IMAGES, -1).max(axis=1).min() == 1
