"""What each latent tells apart besides its main factor (bcvae.within_factors), against sums worked
by hand and codes built from the factors with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcvae.data import render_dsprites, sprite_area
from bcvae.data.render import FACTOR_NAMES
from bcvae.latents import random_classes
from bcvae.within_factors import area_cells, explained, latent_rows, rank_correlation, within_factors

SHAPE, SCALE, ORIENTATION, POSX = (FACTOR_NAMES.index(f) for f in ("shape", "scale", "orientation", "posX"))


def test_explained_by_hand():
    # Two groups {0, 1}, {2, 3}: SS_b = 4, SS_w = 1, SS = 5; k = 2 cells, one class: 4 - 1 * 1/2 = 3.5.
    assert explained(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(3.5 / 5)
    # Within given {a: 0, 1, 2, 3 | b: 10, 10, 12, 12}: in a, labels split as above (SS_b 4, SS_w 1);
    # in b, SS_b 4, SS_w 0. Totals 8 and 1, k = 4 cells in 2 classes, N = 8: 8 - 2 * 1/4 = 7.5 of 9.
    z = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 12.0, 12.0])
    labels, given = np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert explained(z, labels, given) == pytest.approx(7.5 / 9)


def test_explained_of_codes_built_from_the_factors():
    classes = random_classes(20_000, np.random.default_rng(0))
    scale, shape, orientation = classes[:, SCALE], classes[:, SHAPE], classes[:, ORIENTATION]
    code = 10.0 * shape + scale
    # Within a scale class the code is 10 * shape exactly: shape explains all of it.
    assert explained(code, shape, scale) == pytest.approx(1.0, abs=1e-12)
    # Uniform classes: Var(10 * shape) = 100 * 2/3, Var(scale) = 35/12.
    assert explained(code, scale) == pytest.approx((35 / 12) / (200 / 3 + 35 / 12), abs=0.01)
    # Orientation plays no part: 1,280 cells of posX x orientation would give the plain ratio
    # about 0.06 from noise alone; the correction takes it to about 0.
    noise = np.random.default_rng(1).normal(size=len(classes))
    assert explained(code, orientation, scale) < 0.01
    assert explained(noise, orientation, classes[:, POSX]) < 0.01
    # A code constant within each class of the given factor has nothing left to explain.
    assert explained(scale.astype(float), shape, scale) == 0.0


def test_a_code_of_the_area_carries_shape_within_scale_and_one_of_scale_does_not():
    classes = random_classes(6_000, np.random.default_rng(2))
    images = render_dsprites(classes)
    area = sprite_area(images)
    assert area.tolist() == [int(img.sum()) for img in images]
    codes = np.stack([area.astype(float), classes[:, SCALE].astype(float)], axis=1)
    rows = latent_rows(codes, classes, area)
    by_area, by_scale = rows
    assert by_area["main"] == by_scale["main"] == "scale"
    assert by_area["area_r"] == pytest.approx(1.0)
    assert by_area["within"]["shape"] > 0.9        # a square covers more pixels than a heart of its scale
    assert by_scale["within"]["shape"] == 0.0 and by_scale["area_r"] < 0.95
    assert "scale" not in by_area["within"] and set(by_area["eta2"]) == {"shape", "scale", "orientation", "posX", "posY"}
    cells = area_cells(codes[:, 0], classes, area)
    assert len(cells) == 18 and [c["area"] for c in cells] == sorted(c["area"] for c in cells)
    assert [c["code"] for c in cells] == pytest.approx([c["area"] for c in cells])
    # The smallest and the largest sprite: a heart of the smallest scale, a square of the largest.
    assert (cells[0]["scale"], cells[0]["shape"]) == (0, "heart") and (cells[-1]["scale"], cells[-1]["shape"]) == (5, "square")


def test_rank_correlation_by_hand():
    assert rank_correlation([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 400.0]) == pytest.approx(1.0)
    assert rank_correlation([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # Ranks (0, 1, 2, 3) against (1, 0, 3, 2): 1 - 6 * 4 / (4 * 15) = 0.6.
    assert rank_correlation([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]) == pytest.approx(0.6)


def test_only_latents_that_are_on_get_a_row():
    classes = random_classes(500, np.random.default_rng(3))
    codes = np.random.default_rng(4).normal(size=(500, 3))
    rows = latent_rows(codes, classes, sprite_area(render_dsprites(classes)), kl=np.array([2.0, 0.1, 0.7]))
    assert [r["latent"] for r in rows] == [0, 2] and rows[1]["kl"] == pytest.approx(0.7)


def test_the_area_latent_is_the_one_closest_to_the_area():
    def encode(images):
        rng = np.random.default_rng(5)
        return np.stack([rng.normal(size=len(images)), sprite_area(images) + rng.normal(size=len(images))], axis=1)

    result = within_factors(encode, kl=None, images=3_000, seed=0)
    assert result["area_latent"] == 1 and len(result["area_cells"]) == 18 and result["cells_rank_r"] == 1.0
    assert result["latents"][1]["area_r"] > 0.99 and abs(result["latents"][0]["area_r"]) < 0.1


def test_cli_reports_a_trained_run(smoke_run, tmp_path, capsys):
    from bcvae import cli

    out = tmp_path / "within.json"
    assert cli.main(["within-factors", str(smoke_run), "--images", "300", "--out", str(out)]) == 0
    assert "| latent | KL | main (η²) | shape | scale | orientation | posX | posY | r(area) |" in capsys.readouterr().out
    saved = json.loads(out.read_text())[str(smoke_run)]
    assert saved["images"] == 300
    for row in saved["latents"]:
        assert row["kl"] >= np.log(2) and all(0.0 <= v <= 1.0 for v in row["within"].values())


def test_cli_refuses_too_few_images_in_one_line(smoke_run, capsys):
    from bcvae import cli

    assert cli.main(["within-factors", str(smoke_run), "--images", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--images" in err[0], err
