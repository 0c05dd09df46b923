"""Loading, validating, downloading and comparing the real dSprites archive, on small fakes.

The real file is 737,280 images; most tests shrink the expected latent grid
(monkeypatched where `bcvae.data.dsprites` reads it) to 1,024 rows spread over
every factor, so the same checks run on a 4 MB archive.
"""

import hashlib
import io
import urllib.error
import urllib.request

import numpy as np
import pytest

from bcvae.data import dsprites
from bcvae.data.dsprites import (
    DSPRITES_FILENAME,
    DSPRITES_URL,
    DatasetError,
    compare_renderer,
    download_dsprites,
    file_sha256,
    load_dsprites_npz,
)
from bcvae.data.render import N_IMAGES, all_latents_classes, latents_values, render_dsprites


@pytest.fixture(scope="module")
def small():
    """A 1,024-image slice of the dSprites grid and its rendered images."""
    grid = all_latents_classes()[::720]
    return grid, render_dsprites(grid)


@pytest.fixture
def small_grid(monkeypatch, small):
    grid, _ = small
    monkeypatch.setattr(dsprites, "all_latents_classes", lambda: grid.copy())
    return grid


def _write(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def _fake(path, small, **changes):
    """A small archive laid out like the real one (pickled metadata included)."""
    grid, imgs = small
    arrays = {
        "imgs": imgs,
        "latents_classes": grid,
        "latents_values": latents_values(grid),
        "metadata": np.array({"description": "pickled dict"}, dtype=object),
    }
    arrays.update(changes)
    return _write(path, **arrays)


def test_valid_archive_loads_without_unpickling_metadata(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small)
    with pytest.raises(ValueError, match="pickle"):  # metadata really is a pickle
        np.load(path, allow_pickle=False)["metadata"]
    imgs, classes, values = load_dsprites_npz(path)
    np.testing.assert_array_equal(imgs, small[1])
    np.testing.assert_array_equal(classes, small_grid)
    np.testing.assert_array_equal(values, latents_values(small_grid))
    assert issubclass(DatasetError, ValueError)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nothere\.npz: file not found"):
        load_dsprites_npz(tmp_path / "nothere.npz")


def test_truncated_archive(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"d\.npz: truncated or corrupt"):
        load_dsprites_npz(path)


def test_not_an_archive(tmp_path):
    path = tmp_path / "page.npz"
    path.write_text("<html>404: Not Found</html>")
    with pytest.raises(DatasetError, match=r"page\.npz: not an \.npz .*truncated or corrupt"):
        load_dsprites_npz(path)


def test_corrupt_member_data(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 3  # inside the compressed images, away from the zip directory
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_dsprites_npz(path)


def test_foreign_archive_names_missing_key(tmp_path):
    path = _write(tmp_path / "mnist.npz", x_train=np.zeros((3, 28, 28)), y_train=np.zeros(3))
    with pytest.raises(DatasetError, match=r"mnist\.npz: missing array 'imgs'.*x_train"):
        load_dsprites_npz(path)


def test_wrong_shape_against_the_real_size(tmp_path, small):
    grid, imgs = small
    values = latents_values(grid[:10])
    arrays = {"imgs": imgs[:10], "latents_classes": grid[:10], "latents_values": values}
    path = _write(tmp_path / "d.npz", **arrays)
    expected = rf"'imgs' has shape \(10, 64, 64\), expected \({N_IMAGES}, 64, 64\)"
    with pytest.raises(DatasetError, match=expected):
        load_dsprites_npz(path)


def test_wrong_image_size(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small, imgs=np.zeros((len(small_grid), 32, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"'imgs' has shape \(1024, 32, 32\)"):
        load_dsprites_npz(path)


def test_wrong_dtype(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small, imgs=small[1].astype(np.float32))
    with pytest.raises(DatasetError, match="'imgs' has dtype float32, expected uint8"):
        load_dsprites_npz(path)


def test_pickled_array_is_refused(tmp_path, small, small_grid):
    objects = np.empty(len(small_grid), dtype=object)
    path = _fake(tmp_path / "d.npz", small, latents_values=objects)
    with pytest.raises(DatasetError, match="'latents_values' holds pickled objects"):
        load_dsprites_npz(path)


def test_images_scaled_to_255(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small, imgs=small[1] * 255)
    with pytest.raises(DatasetError, match=r"d\.npz: 'imgs' holds values up to 255"):
        load_dsprites_npz(path)


def test_blank_images(tmp_path, small, small_grid):
    path = _fake(tmp_path / "d.npz", small, imgs=np.zeros_like(small[1]))
    with pytest.raises(DatasetError, match="blank"):
        load_dsprites_npz(path)


def test_latent_grid_out_of_order(tmp_path, small, small_grid):
    swapped = small_grid.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    values = latents_values(swapped)
    path = _fake(tmp_path / "d.npz", small, latents_classes=swapped, latents_values=values)
    with pytest.raises(DatasetError, match="'latents_classes' row 3 .*dSprites order"):
        load_dsprites_npz(path)


def test_latent_values_disagree_with_classes(tmp_path, small, small_grid):
    values = latents_values(small_grid)
    values[7, 2] += 1e-3
    path = _fake(tmp_path / "d.npz", small, latents_values=values)
    with pytest.raises(DatasetError, match=r"'latents_values'\[7, 2\] \(scale\)"):
        load_dsprites_npz(path)


def test_file_sha256(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    # FIPS 180-2 test vector for "abc".
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 9000)  # spans several read blocks
    assert file_sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_url_is_the_official_repository():
    assert DSPRITES_URL.startswith("https://github.com/deepmind/dsprites-dataset/")
    assert DSPRITES_URL.endswith("/master/" + DSPRITES_FILENAME)


class _Response(io.BytesIO):
    """What `urlopen` returns, enough for the download loop."""

    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _serve(monkeypatch, payload: bytes) -> list:
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_offline_says_so(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="No network") as info:
        download_dsprites(dest, progress=False)
    message = str(info.value)
    assert DSPRITES_URL in message and str(dest / DSPRITES_FILENAME) in message
    assert list(dest.iterdir()) == []  # no partial file left behind


def test_download_streams_validates_and_renames(tmp_path, monkeypatch, small, small_grid):
    payload = _fake(tmp_path / "served.npz", small).read_bytes()
    requested = _serve(monkeypatch, payload)
    path = download_dsprites(tmp_path / "data", url="https://example.invalid/d.npz", progress=False)
    assert requested == ["https://example.invalid/d.npz"]
    assert path == tmp_path / "data" / DSPRITES_FILENAME
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == [DSPRITES_FILENAME]
    # A second call finds the valid file and does not download again.
    assert download_dsprites(tmp_path / "data", url="https://example.invalid/other") == path
    assert len(requested) == 1


def test_download_of_wrong_content_leaves_nothing(tmp_path, monkeypatch):
    _serve(monkeypatch, b"version https://git-lfs.github.com/spec/v1\n")
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="not the dSprites archive.*truncated or corrupt"):
        download_dsprites(dest, progress=False)
    assert list(dest.iterdir()) == []


def test_download_checks_expected_sha256(tmp_path, monkeypatch, small, small_grid):
    payload = _fake(tmp_path / "served.npz", small).read_bytes()
    _serve(monkeypatch, payload)
    with pytest.raises(DatasetError, match="sha256"):
        download_dsprites(tmp_path / "a", expected_sha256="0" * 64, progress=False)
    good = hashlib.sha256(payload).hexdigest()
    assert download_dsprites(tmp_path / "b", expected_sha256=good, progress=False).exists()


def test_compare_renderer_counts_differences(tmp_path, small, small_grid):
    grid, imgs = small
    assert compare_renderer(_fake(tmp_path / "same.npz", small))["n_pixels_differing"] == 0
    real = imgs.copy()
    real[5, 0, :3] ^= 1  # 3 pixels of a square
    hearts = np.flatnonzero(grid[:, 1] == 2)
    real[hearts[10], 40, 40] ^= 1  # 1 pixel of a heart
    report = compare_renderer(_fake(tmp_path / "real.npz", small, imgs=real))
    assert report["n_images"] == len(grid)
    assert report["n_images_differing"] == 2
    assert report["n_pixels_differing"] == 4
    assert report["max_pixels_differing_in_one_image"] == 3
    assert report["worst_index"] == 5
    assert report["per_shape"]["square"]["n_pixels_differing"] == 3
    assert report["per_shape"]["heart"] == {
        "n_images": len(hearts), "n_images_differing": 1, "n_pixels_differing": 1
    }
    assert report["per_shape"]["ellipse"]["n_images_differing"] == 0


def test_compare_renderer_limit_spreads_over_shapes(tmp_path, small, small_grid):
    report = compare_renderer(_fake(tmp_path / "same.npz", small), limit=30, chunk=7)
    assert report["n_images"] == 30
    assert all(report["per_shape"][s]["n_images"] >= 9 for s in ("square", "ellipse", "heart"))
