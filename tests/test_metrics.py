"""Known-answer tests of the disentanglement metrics (bcvae.metrics).

Every expected value below is derived independently of the implementation:
closed forms for the ground-truth representation on the full dSprites grid
(where factors are exactly uniform and independent), hand-computed toy
cases, sklearn's own mutual information, and chance levels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from bcvae import metrics
from bcvae.data.render import FACTOR_SIZES, all_latents_classes, render_dsprites

SIZES = np.array(FACTOR_SIZES[1:])  # shape, scale, orientation, posX, posY
PERM = np.array([3, 0, 4, 1, 2])  # code dimension i holds factor PERM[i]


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    """Every latent-class tuple once, in the real file's order: (737280, 6)."""
    return all_latents_classes()


def affine_codes(classes: np.ndarray) -> np.ndarray:
    """The ground-truth factors, dimensions permuted and affinely rescaled: (N, 5)."""
    return (2.5 * classes[:, 1:] - 7.0)[:, PERM]


def sampled(n: int, seed: int = 0) -> np.ndarray:
    return metrics.sample_factors(n, np.random.default_rng(seed))


def render_factors(classes: np.ndarray) -> np.ndarray:
    """A stand-in renderer whose images carry their latent classes in pixels (0, 0..5)."""
    images = np.zeros((len(classes), 64, 64), dtype=np.uint8)
    images[:, 0, :6] = classes
    return images


def encode_factors(images: np.ndarray) -> np.ndarray:
    """Reads the factors back from a stand-in image: the ground truth, permuted and exp-rescaled."""
    assert images.dtype == np.uint8 and images.shape[1:] == (64, 64)
    return np.exp(images[:, 0, 1:6].astype(np.float64) / 7.0)[:, PERM]


def partition_mig(transform, sizes=SIZES, num_bins: int = 20) -> float:
    """MIG of a code z_k = transform(v_k) per factor on the full grid, from first principles.

    The discretised code is a function of its factor, so I(z_k; v_k) is the
    entropy of the partition of the factor's (uniform) values into equal-width
    bins; every other dimension is exactly independent of v_k on the full grid.
    """
    gaps = []
    for size in sizes:
        c = transform(np.arange(size, dtype=np.float64))
        bins = np.minimum(np.floor((c - c.min()) / (c.max() - c.min()) * num_bins), num_bins - 1)
        p = np.unique(bins, return_counts=True)[1] / size
        gaps.append(-(p * np.log(p)).sum() / math.log(size))
    return float(np.mean(gaps))


# ---------------------------------------------------------------- sampling and building blocks


def test_sample_factors_are_uniform_independent_and_seeded():
    a, b = sampled(60_000, seed=3), sampled(60_000, seed=3)
    assert a.dtype == np.int64 and a.shape == (60_000, 6)
    np.testing.assert_array_equal(a, b)
    for j, size in enumerate(FACTOR_SIZES):
        counts = np.bincount(a[:, j], minlength=size)
        assert len(counts) == size  # nothing out of range
        expected = len(a) / size
        assert np.all(np.abs(counts - expected) < 6 * math.sqrt(expected))
    assert abs(np.corrcoef(a[:, 3], a[:, 4])[0, 1]) < 0.02


def test_discrete_mutual_info_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 3000)
    disc = np.stack([rng.integers(1, 21, 3000), (labels + rng.integers(0, 3, 3000)) % 9, labels * 1000 + 5], 1)
    expected = [mutual_info_score(labels, disc[:, d]) for d in range(3)]
    np.testing.assert_allclose(metrics.discrete_mutual_info(disc, labels), expected, rtol=1e-10, atol=1e-12)


def test_discretize_uses_equal_width_bins_over_the_range():
    x = np.random.default_rng(1).normal(size=(5000, 3)) * [1.0, 10.0, 0.01]
    width = (x.max(0) - x.min(0)) / 20
    expected = np.minimum(np.floor((x - x.min(0)) / width), 19).astype(int) + 1
    np.testing.assert_array_equal(metrics.discretize(x, 20), expected)


# ---------------------------------------------------------------- MIG


def test_mig_toy_example_equals_hand_computed_value():
    # v = 00001111; z0 = v; z1 agrees with v on 6 of 8 points. Joint of (v, z1):
    # 3/8, 1/8, 1/8, 3/8 -> I(z1; v) = 1 - H_b(1/4) bits, I(z0; v) = H(v) = 1 bit,
    # so MIG = H_b(1/4) = 0.811278 (the constant color column is left out).
    v = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    codes = np.stack([v, [0, 0, 0, 1, 0, 1, 1, 1]], 1).astype(float)
    h_b = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert metrics.mig(codes, np.stack([np.zeros(8, int), v], 1)) == pytest.approx(h_b, abs=1e-12)
    assert h_b == pytest.approx(0.811278, abs=1e-6)


def test_mig_of_ground_truth_on_full_grid_is_the_binning_limit(grid):
    # 20 bins: shape and scale keep all their entropy; orientation's 40 values
    # fall two per bin (log 20 / log 40); position's 32 values make 12 bins of
    # two and 8 of one (4.25 of 5 bits).
    closed_form = (1 + 1 + math.log(20) / math.log(40) + 0.85 + 0.85) / 5
    assert partition_mig(lambda v: v) == pytest.approx(closed_form, abs=1e-12)
    assert metrics.mig(affine_codes(grid), grid) == pytest.approx(closed_form, abs=1e-9)
    # Not invariant to monotone rescaling: exp(v / 7) crowds low values into one bin.
    exp_codes = np.exp(grid[:, 1:] / 7.0)[:, PERM]
    expected = partition_mig(lambda v: np.exp(v / 7.0))
    assert metrics.mig(exp_codes, grid) == pytest.approx(expected, abs=1e-9)
    assert expected < closed_form - 0.1


def test_mig_drops_by_the_derived_amount_when_one_dimension_mixes_two_factors(grid):
    # Codes (x + y, x - y) in place of (x, y): (v, x + y) and (v, x - y) have the
    # same joint distribution for v = x and for v = y (y -> 31 - y is a symmetry
    # of the uniform grid), so both position gaps are exactly 0 and MIG falls
    # by (0.85 + 0.85) / 5 = 0.34 from the ground truth's value.
    x, y = grid[:, 4], grid[:, 5]
    mixed = np.stack([grid[:, 1], grid[:, 2], grid[:, 3], x + y, x - y], 1).astype(float)
    truth = metrics.mig(affine_codes(grid), grid)
    assert metrics.mig(mixed, grid) == pytest.approx(truth - 0.34, abs=1e-9)


def test_mig_per_factor_names_the_factors_a_score_lacks(grid):
    # The ground truth's terms are the closed forms above; mixing x and y zeroes exactly
    # the two position terms; a constant factor column has no term and MIG leaves it out.
    terms = metrics.mig_per_factor(affine_codes(grid), grid)
    assert math.isnan(terms[0])  # colour: a single value
    np.testing.assert_allclose(terms[1:], [1, 1, math.log(20) / math.log(40), 0.85, 0.85], atol=1e-9)
    assert metrics.mig(affine_codes(grid), grid) == pytest.approx(np.mean(terms[1:]), abs=1e-12)
    x, y = grid[:, 4], grid[:, 5]
    mixed = np.stack([grid[:, 1], grid[:, 2], grid[:, 3], x + y, x - y], 1).astype(float)
    np.testing.assert_allclose(metrics.mig_per_factor(mixed, grid)[1:], [1, 1, math.log(20) / math.log(40), 0, 0],
                               atol=1e-9)


def test_mig_of_random_and_constant_codes_is_zero():
    classes = sampled(10_000)
    noise = np.random.default_rng(1).normal(size=(10_000, 10))
    assert 0 <= metrics.mig(noise, classes) < 0.02  # plug-in MI bias only
    assert metrics.mig(np.zeros((10_000, 10)), classes) == 0.0


def test_metrics_reject_bad_input():
    classes = sampled(100)
    with pytest.raises(ValueError, match="NaN"):
        metrics.mig(np.full((100, 3), np.nan), classes)
    with pytest.raises(ValueError, match="same N"):
        metrics.sap(np.zeros((99, 3)), classes)
    with pytest.raises(ValueError, match="integer"):
        metrics.dci(np.zeros((100, 3)), classes.astype(float))
    with pytest.raises(ValueError, match="single value"):
        metrics.mig(np.zeros((100, 3)), classes[:, :1])
    with pytest.raises(ValueError, match="num_train"):
        metrics.sap(np.zeros((100, 3)), classes, num_train=90, num_test=20)
    with pytest.raises(ValueError, match="factors must be"):
        metrics.beta_vae_score(encode_factors, factors=("shape", "size"), render=render_factors)


# ---------------------------------------------------------------- SAP


def test_sap_known_answers():
    classes = sampled(15_000)
    codes = affine_codes(classes)
    # Continuous mode: squared correlation 1 for the own dimension, ~1/N for the others.
    assert metrics.sap(codes, classes, continuous_factors=True) == pytest.approx(1.0, abs=2e-3)
    noise = np.random.default_rng(2).normal(size=(15_000, 6))
    assert metrics.sap(noise, classes) < 0.02
    assert metrics.sap(np.zeros((15_000, 6)), classes) == 0.0


def test_sap_discrete_perfect_code_scores_one_minus_chance():
    # Discrete mode scores raw accuracy: a code that separates a binary factor
    # exactly scores 1, an unrelated code 1/2 (any classifier of an independent
    # uniform label), so the perfect representation's SAP is 1/2, not 1.
    rng = np.random.default_rng(4)
    factors = rng.integers(0, 2, size=(15_000, 4))
    codes = np.concatenate([3.0 * factors[:, ::-1] + 1.0, rng.normal(size=(15_000, 2))], 1)
    assert metrics.sap(codes, factors) == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------- DCI


def test_dci_scores_of_hand_computed_importance_matrices():
    assert metrics.dci_scores(np.eye(4)) == pytest.approx((1.0, 1.0), abs=1e-9)
    # R = [[1, 1], [0, 2]]: code 0 splits evenly (D_0 = 0), code 1 is pure (D_1 = 1),
    # each holds half the importance -> D = 0.5. Factor 0 is pure (C = 1, weight 1/4);
    # factor 1 splits 1/3 : 2/3 (C = 1 - H_2(1/3), weight 3/4).
    h = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    d, c = metrics.dci_scores(np.array([[1.0, 1.0], [0.0, 2.0]]))
    assert d == pytest.approx(0.5, abs=1e-9)
    assert c == pytest.approx(0.25 + 0.75 * (1 - h), abs=1e-9)
    assert metrics.dci_scores(np.zeros((3, 2))) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_dci_ground_truth_random_and_constant():
    classes = sampled(3000)
    perfect = metrics.dci(affine_codes(classes), classes)
    assert perfect["disentanglement"] > 0.99 and perfect["completeness"] > 0.99
    assert perfect["informativeness"] == 1.0
    chance = float(np.mean(1 / SIZES))  # accuracy of any classifier of an independent uniform label
    noise = metrics.dci(np.random.default_rng(5).normal(size=(3000, 10)), classes)
    assert noise["disentanglement"] < 0.05 and noise["completeness"] < 0.05
    assert noise["informativeness"] == pytest.approx(chance, abs=0.02)
    flat = metrics.dci(np.zeros((3000, 10)), classes)
    assert flat["disentanglement"] == pytest.approx(0.0, abs=1e-9)
    assert flat["completeness"] == pytest.approx(0.0, abs=1e-9)


def test_dci_informativeness_per_factor_finds_the_factor_a_code_lacks():
    # The ground truth without its orientation column: every other factor is read
    # exactly, orientation only at chance (1/40, the label is independent of the code).
    classes = sampled(3000)
    codes = affine_codes(classes)[:, PERM != 2]
    per = metrics.dci(codes, classes[:, 1:])["informativeness_per_factor"]
    assert per[:2] == [1.0, 1.0] and per[3:] == [1.0, 1.0]
    assert per[2] == pytest.approx(1 / 40, abs=0.02)
    # A constant column (colour) is not measured: NaN in its place, left out of the mean.
    out = metrics.dci(codes, classes)
    assert math.isnan(out["informativeness_per_factor"][0]) and out["informativeness_per_factor"][1:] == per
    assert out["informativeness"] == pytest.approx(np.mean(per), abs=1e-12)


def test_dci_disentanglement_of_codes_mixing_two_factors_is_zero():
    # Factors (posX, posY), codes (x + y, x - y). Swapping x and y maps the problem
    # to itself with x - y negated (trees are indifferent to a sign), so each code
    # gives equal importance to both factors: D_j = 1 - log_2(2) = 0 for both codes,
    # against 1 for the codes (x, y).
    classes = sampled(1500)
    x, y = classes[:, 4], classes[:, 5]
    factors = classes[:, 4:]
    assert metrics.dci(np.stack([x, y], 1).astype(float), factors)["disentanglement"] > 0.99
    assert metrics.dci(np.stack([x + y, x - y], 1).astype(float), factors)["disentanglement"] < 0.01


def test_dci_exact_gbt_and_hist_agree_on_a_small_problem():
    rng = np.random.default_rng(6)
    factors = np.stack([rng.integers(0, k, 900) for k in (2, 3, 4)], 1)
    codes = np.concatenate([factors[:, ::-1] * 0.5, rng.normal(size=(900, 2))], 1)
    for model in ("gbt", "hist"):
        out = metrics.dci(codes, factors, model=model)
        assert out["disentanglement"] > 0.9 and out["completeness"] > 0.9, model
        assert out["informativeness"] == 1.0, model
    with pytest.raises(ValueError, match="model"):
        metrics.dci(codes, factors, model="xgboost")


# ---------------------------------------------------------------- BetaVAE and FactorVAE


def test_beta_vae_and_factor_vae_score_ground_truth_as_one():
    kwargs = dict(num_train=400, num_eval=300, render=render_factors)
    assert metrics.beta_vae_score(encode_factors, seed=1, **kwargs) == 1.0
    details = metrics.factor_vae_details(encode_factors, seed=1, num_variance_estimate=1000, **kwargs)
    assert details["eval_accuracy"] == 1.0 and details["num_active_dims"] == 5


def test_beta_vae_and_factor_vae_of_random_codes_are_chance(grid):
    table = np.random.default_rng(7).normal(size=(len(grid), 8))
    kwargs = dict(num_train=2000, num_eval=2000, codes_table=table)
    assert metrics.beta_vae_score(None, **kwargs) == pytest.approx(1 / 5, abs=0.04)
    assert metrics.factor_vae_score(None, **kwargs) == pytest.approx(1 / 5, abs=0.04)
    # With three counted factors chance is 1/3.
    three = dict(kwargs, factors=("scale", "posX", "posY"))
    assert metrics.beta_vae_score(None, **three) == pytest.approx(1 / 3, abs=0.04)


@pytest.mark.parametrize("encoded, extra_noise_dims, expected", [
    # Fixing an encoded factor always leaves its own dimension least variable: those votes
    # are right. Fixing a factor no dimension holds leaves every active dimension as variable
    # as before, so its vote lands on one of the D active dimensions uniformly at random and
    # the majority vote of an informative dimension is its own factor: those votes are wrong.
    (("posX", "posY", "scale"), 0, 3 / 5),
    (("posX", "posY", "scale", "orientation"), 0, 4 / 5),
    # One active dimension that holds nothing collects only the votes of the two unheld
    # factors (1/4 of each), so whichever of them it is assigned to scores its 1/4:
    # 3/5 + (1/5)(1/4).
    (("posX", "posY", "scale"), 1, 3 / 5 + 1 / 20),
])
def test_factor_vae_score_counts_the_factors_a_code_holds(grid, encoded, extra_noise_dims, expected):
    names = list(metrics.DEFAULT_FACTORS)  # shape, scale, orientation, posX, posY: grid columns 1..5
    rng = np.random.default_rng(5)
    table = np.column_stack([grid[:, 1 + names.index(f)].astype(float) for f in encoded]
                            + [rng.normal(size=len(grid)) for _ in range(extra_noise_dims)])
    details = metrics.factor_vae_details(None, seed=2, num_train=3000, num_eval=3000, codes_table=table)
    assert details["eval_accuracy"] == pytest.approx(expected, abs=0.03)  # 3,000 votes: binomial sd <= 0.009
    per_factor = details["eval_accuracy_per_factor"]
    assert [per_factor[f] for f in encoded] == [1.0] * len(encoded)
    unheld = [per_factor[f] for f in names if f not in encoded]
    # an unheld factor scores only where it won the dimension that holds nothing (1/4 there)
    assert sum(unheld) == pytest.approx(extra_noise_dims / 4, abs=0.06) and max(unheld) < 0.35
    assert details["classifier"][:len(encoded)] == list(encoded)
    votes = np.array(details["eval_votes"])
    assert votes.shape == (5, len(encoded) + extra_noise_dims) and votes.sum() == 3000
    for k, factor in enumerate(encoded):  # fixing a held factor: always its own dimension
        assert votes[names.index(factor), k] == votes[names.index(factor)].sum() > 0


def test_factor_vae_prunes_on_standard_deviation_and_scores_collapse_as_zero(grid):
    truth = grid[:, 1:].astype(float)
    # std of scale * 0.01 is 0.017 (pruned); std of orientation * 0.01 is 0.115:
    # kept although its variance, 0.013, is below 0.05.
    table = truth * np.array([1.0, 0.01, 0.01, 1.0, 1.0])
    details = metrics.factor_vae_details(None, num_train=300, num_eval=300, codes_table=table)
    assert details["active_dims"] == [0, 2, 3, 4]
    collapsed = metrics.factor_vae_details(None, num_train=300, num_eval=300, codes_table=np.zeros((len(grid), 4)))
    assert collapsed["eval_accuracy"] == 0.0 and "no code dimension" in collapsed["note"]


def test_codes_table_and_render_paths_agree_and_each_image_is_encoded_once(grid):
    seen = []

    def counting_encode(images):
        seen.append(np.ravel_multi_index(images[:, 0, :6].T.astype(np.int64), FACTOR_SIZES))
        return encode_factors(images)

    table = np.exp(grid[:, 1:] / 7.0)[:, PERM]  # what encode_factors returns, in file order
    source = metrics.CodeSource(counting_encode, render_factors)
    kwargs = dict(num_train=300, num_eval=200, batch_size=16)
    by_render = metrics.factor_vae_details(source, seed=2, **kwargs)
    by_table = metrics.factor_vae_details(None, seed=2, codes_table=table, **kwargs)
    assert by_render == by_table
    encoded = np.concatenate(seen)
    assert len(np.unique(encoded)) == len(encoded) == source.n_encoded  # never twice
    before = source.n_encoded
    metrics.factor_vae_details(source, seed=2, **kwargs)
    assert source.n_encoded == before
    with pytest.raises(ValueError, match="codes_table"):
        metrics.CodeSource(codes_table=np.zeros((100, 3)))
    with pytest.raises(ValueError, match="encode must return"):
        metrics.beta_vae_score(lambda im: np.zeros((len(im) + 1, 2)), num_train=10, num_eval=10, render=render_factors)


def test_real_renderer_end_to_end_with_image_moments():
    # Centroid and second moments of the rendered sprite are informative about
    # position, scale and (partly) orientation, so both scores sit well above chance 1/5.
    def moments(images):
        x = images.reshape(len(images), -1).astype(np.float64)
        r, c = np.divmod(np.arange(64 * 64), 64)
        m = x.sum(1)
        cx, cy = x @ c / m, x @ r / m
        return np.stack([m / 100, cx / 10, cy / 10, (x @ (c * c) / m - cx**2) / 10, (x @ (r * r) / m - cy**2) / 10], 1)

    out = metrics.evaluate(moments, metrics=("mig", "beta_vae", "factor_vae"), num_points=300)
    assert out["scores"]["beta_vae"] > 0.5 and out["scores"]["factor_vae"] > 0.5
    assert out["scores"]["mig"] > 0.1
    assert out["settings"]["codes"] == "encode(render(classes))" and metrics.render_dsprites is render_dsprites


# ---------------------------------------------------------------- evaluate


def test_evaluate_is_deterministic_and_records_every_setting(grid):
    noisy = affine_codes(grid) + np.random.default_rng(8).normal(size=(len(grid), 5)) * 6.0
    first, again = (metrics.evaluate(codes_table=noisy, num_points=300) for _ in range(2))
    assert first["scores"] == again["scores"]
    quick = ("mig", "sap", "beta_vae", "factor_vae")
    other = metrics.evaluate(codes_table=noisy, metrics=quick, seed=1, num_points=300)
    assert all(other["scores"][k] != first["scores"][k] for k in quick)
    scores, settings = first["scores"], first["settings"]
    assert set(scores) >= {"mig", "sap", "dci", "beta_vae", "factor_vae", "beta_vae_train", "factor_vae_train"}
    assert set(scores["dci"]) == {"disentanglement", "completeness", "informativeness", "informativeness_train",
                                  "informativeness_per_factor"}
    per_factor = scores["dci"]["informativeness_per_factor"]
    assert list(per_factor) == settings["factors"]
    assert np.mean(list(per_factor.values())) == pytest.approx(scores["dci"]["informativeness"], abs=1e-12)
    assert all(0.0 < scores[k] < 1.0 for k in ("mig", "beta_vae", "factor_vae"))
    assert settings["factors"] == ["shape", "scale", "orientation", "posX", "posY"]
    assert settings["representation"] == "mean" and settings["codes"] == "codes_table"
    assert settings["sklearn"] and settings["numpy"]
    assert settings["mig"] == {"num_bins": 20, "num_points": 300}
    assert settings["sap"] == {"num_train": 300, "num_test": 150, "continuous_factors": False}
    assert settings["dci"] == {"num_train": 300, "num_test": 150, "seed": 0, "model": "hist"}
    assert settings["factor_vae"]["num_variance_estimate"] == 300
    assert settings["factor_vae"]["prune_threshold"] == 0.05 and settings["beta_vae"]["batch_size"] == 64
    assert set(first["seconds"]) >= {"mig", "sap", "dci", "beta_vae", "factor_vae", "render_encode", "total"}


def test_evaluate_applies_overrides_and_rejects_unknown_names(grid):
    table = affine_codes(grid)
    out = metrics.evaluate(codes_table=table, metrics=("mig", "factor_vae"), num_points=2000,
                           mig={"num_bins": 7}, factor_vae={"batch_size": 8})
    assert set(out["scores"]) == {"mig", "mig_per_factor", "factor_vae", "factor_vae_train",
                                  "factor_vae_active_dims", "factor_vae_per_factor"}
    assert out["settings"]["factor_vae"]["batch_size"] == 8 and out["settings"]["mig"]["num_bins"] == 7
    votes = out["factor_vae_votes"]
    assert votes["factors"] == list(metrics.DEFAULT_FACTORS) and len(votes["classifier"]) == len(votes["active_dims"])
    assert np.array(votes["train_votes"]).shape == (5, len(votes["active_dims"]))
    # The shared sample is num_points + num_points // 2 draws of the seed; MIG uses the first num_points.
    classes = metrics.sample_factors(3000, np.random.default_rng(0))[:2000]
    assert out["scores"]["mig"] == metrics.mig(affine_codes(classes), classes, num_bins=7)
    assert out["scores"]["mig"] != metrics.mig(affine_codes(classes), classes)
    terms = metrics.mig_per_factor(affine_codes(classes), classes, num_bins=7)[1:]  # colour left out
    assert out["scores"]["mig_per_factor"] == dict(zip(metrics.DEFAULT_FACTORS, terms.tolist()))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.evaluate(codes_table=table, metrics=("mig", "irs"))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.evaluate(codes_table=table, metrics=("mig",), mgi={"num_bins": 3})
    with pytest.raises(ValueError, match="logvar_table"):
        metrics.evaluate(codes_table=table, metrics=("mig_full_grid",))


# ---------------------------------------------------------------- MIG over the full grid (Chen's estimator)

SMALL = (1, 2, 4, 8, 8, 4)  # a small grid with dSprites' layout: C order, posY fastest


def small_grid_posterior(mixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Near-deterministic posteriors (std 0.01) of the ground truth, plus one prior-like dimension."""
    v = np.indices(SMALL).reshape(6, -1).T[:, 1:].astype(np.float64)
    if mixed:
        v[:, 3], v[:, 4] = v[:, 3] + v[:, 4], v[:, 3] - v[:, 4]
    mean = np.concatenate([v, np.zeros((len(v), 1))], 1)
    logvar = np.concatenate([np.full_like(v, math.log(1e-4)), np.zeros((len(v), 1))], 1)
    return mean, logvar


def test_mig_full_grid_known_answers():
    # Narrow posteriors at distinct values: I(z_k; v_k) = H(v_k), so each gap is 1;
    # mixing posX and posY into (x + y, x - y) makes both gaps 0 (same symmetry as
    # for the histogram MIG): 2 of Chen's 4 factors -> 0.5. A posterior equal to the
    # prior carries nothing. Tolerances cover the Monte Carlo entropy estimates.
    kwargs = dict(factor_sizes=SMALL, n_samples=1000, device="cpu")
    assert metrics.mig_full_grid(*small_grid_posterior(), **kwargs) == pytest.approx(1.0, abs=0.03)
    assert metrics.mig_full_grid(*small_grid_posterior(mixed=True), **kwargs) == pytest.approx(0.5, abs=0.03)
    prior = np.zeros((math.prod(SMALL), 3))
    assert abs(metrics.mig_full_grid(prior, prior, **kwargs)) < 0.02
    with pytest.raises(ValueError, match="mean and logvar"):
        metrics.mig_full_grid(prior[:-1], prior[:-1], **kwargs)


@pytest.mark.parametrize("logvar", [-120.0, -3000.0])
def test_mig_full_grid_reads_collapsed_posteriors(logvar):
    # σ² = e^-120 underflows in float32: each sample z lands exactly on its own mean and
    # exp(-log σ²) is infinite. The code is still the ground truth at distinct values, so
    # the known answers of test_mig_full_grid_known_answers hold (not 0·inf = NaN).
    kwargs = dict(factor_sizes=SMALL, n_samples=1000, device="cpu")
    for mixed, expected in ((False, 1.0), (True, 0.5)):
        mean, lv = small_grid_posterior(mixed=mixed)
        lv[lv < 0] = logvar
        assert metrics.mig_full_grid(mean, lv, **kwargs) == pytest.approx(expected, abs=0.03)



def test_latent_information_splits_each_kl_into_information_and_marginal_mismatch():
    from torch.distributions import Normal, kl_divergence

    rng = np.random.default_rng(3)
    # z0: the prior for every image (no information, no KL); z1: 8 equally likely values
    # 3 apart with sigma 0.01, so I(x; z1) = log 8 exactly; z2: Gaussian means
    # mu ~ N(0, 1) with sigma 0.5, so q(z2) = N(0, 1.25), I = 1/2 log(1.25 / 0.25) and
    # the marginal KL is KL(N(0, 1.25) || N(0, 1)) (torch.distributions).
    n = 4000
    mean = np.stack([np.zeros(n), 3.0 * (np.arange(n) % 8) - 10.5, rng.standard_normal(n)], 1)
    mean[:, 2] = (mean[:, 2] - mean[:, 2].mean()) / mean[:, 2].std()  # exactly N(0, 1)'s moments
    logvar = np.stack([np.zeros(n), np.full(n, 2 * math.log(0.01)), np.full(n, 2 * math.log(0.5))], 1)
    out = metrics.latent_information(mean, logvar, n_samples=4000, device="cpu")
    q, p = Normal(0.0, math.sqrt(1.25)), Normal(0.0, 1.0)
    exact_kl = [0.0, float(np.mean(0.5 * (mean[:, 1] ** 2 + 1e-4 - 1) - math.log(0.01))),
                float(kl_divergence(Normal(0.0, 0.5), p)) + 0.5]
    np.testing.assert_allclose(out["kl"], exact_kl, rtol=1e-6, atol=1e-12)
    # Separated groups make every Monte Carlo term exact; the overlapping Gaussian mixture
    # leaves sampling noise (per-sample spread 0.9 nats over 4,000 samples: 0.05 is 3.5 standard errors).
    np.testing.assert_allclose(out["mutual_information"][:2], [0.0, math.log(8)], atol=1e-4)
    assert out["mutual_information"][2] == pytest.approx(0.5 * math.log(5), abs=0.05)
    assert out["marginal_kl"][2] == pytest.approx(float(kl_divergence(q, p)), abs=0.05)
    assert out["marginal_kl"][1] == pytest.approx(exact_kl[1] - math.log(8), abs=1e-4)
    # z1 and z2 are independent, so the code holds the sum of their information: no TC.
    joint = out["joint"]
    assert joint["kl"] == pytest.approx(sum(exact_kl), rel=1e-6)
    assert joint["mutual_information"] == pytest.approx(math.log(8) + 0.5 * math.log(5), abs=0.05)
    assert abs(joint["total_correlation"]) < 0.05
    with pytest.raises(ValueError, match="mean and logvar"):
        metrics.latent_information(mean[:, :2], logvar)


def test_latent_information_counts_shared_information_as_total_correlation():
    # Two latents with the same 8-valued code hold log 8 each and log 8 together: TC = log 8.
    # A second, independent 8-valued code instead adds its log 8: I(x; z) = log 64, TC = 0.
    n = 4096
    group, other = np.arange(n) % 8, (np.arange(n) // 8) % 8
    logvar = np.full((n, 2), 2 * math.log(0.01))
    for second, info, tc in ((group, math.log(8), math.log(8)), (other, math.log(64), 0.0)):
        mean = np.stack([3.0 * group - 10.5, 3.0 * second - 10.5], 1)
        out = metrics.latent_information(mean, logvar, n_samples=500, device="cpu")
        np.testing.assert_allclose(out["mutual_information"], [math.log(8)] * 2, atol=1e-4)
        assert out["joint"]["mutual_information"] == pytest.approx(info, abs=1e-4)
        assert out["joint"]["total_correlation"] == pytest.approx(tc, abs=1e-4)
        assert out["joint"]["marginal_kl"] == pytest.approx(out["marginal_kl"].sum() + tc, abs=1e-4)



def test_evaluate_reports_latent_information_by_latent(grid):
    # Narrow posteriors at the ground truth's distinct values: each latent holds its
    # factor exactly, I(x; z_i) = log |V| of the factor it holds.
    table = affine_codes(grid)
    out = metrics.evaluate(codes_table=table, logvar_table=np.full_like(table, math.log(1e-4)),
                           metrics=("latent_information",), latent_information={"n_samples": 200})
    split = out["scores"]["latent_information"]
    assert set(split) == {"kl", "mutual_information", "marginal_kl", "joint"}
    assert list(split["kl"]) == [f"z{i}" for i in range(5)]
    np.testing.assert_allclose(list(split["mutual_information"].values()), np.log(SIZES[PERM]), atol=1e-3)
    # Together the five latents tell all 737,280 class tuples apart: I(x; z) = log N.
    assert split["joint"]["mutual_information"] == pytest.approx(math.log(len(grid)), abs=0.01)
    assert out["settings"]["latent_information"]["n_samples"] == 200


# ---------------------------------------------------------------- defaults (slow)


@pytest.mark.slow
def test_beta_vae_and_factor_vae_at_default_sizes():
    assert metrics.beta_vae_score(encode_factors, render=render_factors) == 1.0
    assert metrics.factor_vae_score(encode_factors, render=render_factors) == 1.0


@pytest.mark.slow
def test_dci_drops_by_the_derived_amount_when_one_dimension_mixes_two_factors():
    # All five factors, posX and posY replaced by (x + y, x - y). By the x <-> y
    # symmetry each mixed code splits its importance evenly between posX and posY
    # (D_j = 1 - log_5 2) and the two hold 2 of the 5 units of importance:
    # D = 3/5 + 2/5 (1 - log_5 2) = 0.828 (1 for the ground truth). The posX/posY
    # classifiers (accuracy ~0.9) leak a little importance to unrelated codes,
    # which can only lower D: measured 0.813 at disentanglement_lib's 10,000 points.
    classes = sampled(15_000)
    x, y = classes[:, 4], classes[:, 5]
    mixed = np.stack([classes[:, 1], classes[:, 2], classes[:, 3], x + y, x - y], 1).astype(float)
    expected = 0.6 + 0.4 * (1 - math.log(2) / math.log(5))
    d = metrics.dci(mixed, classes)["disentanglement"]
    assert expected - 0.03 < d < expected + 0.005


@pytest.mark.slow
def test_dci_hist_stays_close_to_exact_gbt_on_a_mixed_representation():
    classes = sampled(3000)
    f = classes[:, 1:] / SIZES
    rng = np.random.default_rng(9)
    codes = np.stack([f[:, 0] + 0.3 * f[:, 1], np.sin(2 * np.pi * f[:, 2]), f[:, 3] + f[:, 4], f[:, 3] - f[:, 4],
                      f[:, 1] ** 2, rng.normal(size=3000)], 1) + 0.05 * rng.normal(size=(3000, 6))
    exact, fast = metrics.dci(codes, classes, model="gbt"), metrics.dci(codes, classes, model="hist")
    for key in ("disentanglement", "completeness", "informativeness"):
        assert fast[key] == pytest.approx(exact[key], abs=0.01), key  # measured within 0.004


def test_factor_vae_names_the_points_won_by_dimensions_near_the_pruning_threshold(grid):
    """posX, posY and scale held by full-size dimensions, orientation by one whose code sd is
    0.07 (above the 0.05 threshold, below twice it): fixing orientation leaves that dimension
    least variable every time, so it wins all orientation votes, a fifth of the score."""
    names = list(metrics.DEFAULT_FACTORS)
    orientation = grid[:, 1 + names.index("orientation")].astype(float)
    weak = 0.07 * (orientation - orientation.mean()) / orientation.std()
    table = np.column_stack([grid[:, 1 + names.index(f)].astype(float) for f in ("posX", "posY", "scale")] + [weak])
    details = metrics.factor_vae_details(None, seed=2, num_train=3000, num_eval=3000, codes_table=table)
    assert details["eval_accuracy"] == pytest.approx(4 / 5, abs=0.03)
    np.testing.assert_allclose(details["active_sd"], [*table[:, :3].std(axis=0), 0.07], rtol=0.05)
    points = details["points_per_dim"]
    assert sum(points) == pytest.approx(100 * details["eval_accuracy"])
    assert points[3] == pytest.approx(100 * np.array(details["eval_votes"])[names.index("orientation")].sum() / 3000)
    assert details["note"].startswith(f"{points[3]:.1f} points of the score come from dimensions whose code sd")
    assert "3 (sd 0.07" in details["note"]
    # The same code with the orientation dimension at full size: nothing to name.
    table[:, 3] = weak / 0.07
    assert "note" not in metrics.factor_vae_details(None, seed=2, num_train=300, num_eval=300, codes_table=table)
