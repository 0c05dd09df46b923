"""Which factors a reconstruction draws (bcvae.decoded_factors), against decoders whose answer is known:
one that draws the image exactly, one blind to orientation, one that draws every sprite a column off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bcvae.data import render_dsprites
from bcvae.data.render import FACTOR_NAMES
from bcvae.decoded_factors import angle_error, decoded_factors
from bcvae.latents import random_classes

ORIENTATION, POSX = (FACTOR_NAMES.index(f) for f in ("orientation", "posX"))


def decoder_of(classes, change=None):
    """Wrap a whole set of classes: the reconstruct gets the rendered batch and draws from its classes."""
    batches = {}
    for start in range(0, len(classes), 128):   # decoded_factors' default chunk
        part = classes[start:start + 128]
        batches[render_dsprites(part).tobytes()] = part

    def reconstruct(images):
        part = batches[images.tobytes()].copy()
        drawn = render_dsprites(change(part) if change else part)
        return torch.from_numpy(drawn).float() * 60 - 30   # sure logits: ±30
    return reconstruct


def test_angle_error_counts_each_shapes_symmetry():
    square, ellipse, heart = 0, 1, 2
    # class o is 360·o/39 degrees: ten classes are 92.3°, twenty 184.6°, thirteen 120°
    assert angle_error(10, 0, np.array(square)) == pytest.approx(360 * 10 / 39 - 90)
    assert angle_error(20, 0, np.array(ellipse)) == pytest.approx(360 * 20 / 39 - 180)
    assert angle_error(13, 0, np.array(heart)) == pytest.approx(120.0)
    assert angle_error(39, 0, np.array(heart)) == pytest.approx(0.0, abs=1e-9)   # 2π is 0
    assert angle_error(5, 0, np.array(square)) == pytest.approx(90 - 360 * 5 / 39)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_an_exact_decoder_draws_every_factor(likelihood):
    classes = random_classes(60, np.random.default_rng(1))
    result = decoded_factors(decoder_of(classes), classes, likelihood=likelihood)
    for factor in ("shape", "scale", "orientation", "posX", "posY"):
        assert result[factor]["accuracy"] == 1.0, factor
    assert result["orientation"]["angle_error"] == 0.0
    assert result["scale"]["class_error"] == result["posY"]["class_error"] == 0.0
    # every shape, scale and position gives another picture: a blind pick is right 1/3, 1/6, 1/32 of the time
    assert result["shape"]["chance"] == pytest.approx(1 / 3)
    assert result["scale"]["chance"] == pytest.approx(1 / 6)
    assert result["posX"]["chance"] == pytest.approx(1 / 32)
    assert sum(v["images"] for v in result["shape"]["by_shape"].values()) == 60


def test_a_decoder_blind_to_orientation_scores_near_chance():
    # one heart at all 40 orientations; the decoder always draws it unturned. Only classes 0 and 39
    # (0 and 2π) are that picture, so it is right 2 times in 40. A uniformly random pick (chance)
    # is right 2/40 of the time for those two hearts and 1/40 for the other 38: 42/1600.
    classes = np.tile(np.array([0, 2, 3, 0, 16, 16]), (40, 1))
    classes[:, ORIENTATION] = np.arange(40)

    def unturned(c):
        c[:, ORIENTATION] = 0
        return c
    result = decoded_factors(decoder_of(classes, unturned), classes, factors=("orientation",))
    assert result["orientation"]["accuracy"] == pytest.approx(2 / 40)
    assert result["orientation"]["chance"] == pytest.approx(42 / 1600)
    # its pick is always class 0, so its angle off is each heart's turn folded into [0°, 180°]
    turns = np.arange(40) * 360 / 39
    assert result["orientation"]["angle_error"] == pytest.approx(np.minimum(turns, 360 - turns).mean())
    assert result["orientation"]["angle_error_chance"] == pytest.approx(90, abs=0.5)   # a random turn: 90° off


def test_a_decoder_that_draws_a_column_off_never_draws_posx():
    classes = random_classes(50, np.random.default_rng(2))
    classes[:, POSX] = np.minimum(classes[:, POSX], 30)

    def shifted(c):
        c[:, POSX] += 1
        return c
    result = decoded_factors(decoder_of(classes, shifted), classes, factors=("posX",))
    assert result["posX"]["accuracy"] == 0.0   # it always prefers the column it drew,
    assert result["posX"]["class_error"] == 1.0   # one class off
    # a random pick among 32 columns is off by the mean of |v − x| over v
    expected = np.abs(np.arange(32)[None] - classes[:, POSX][:, None]).mean()
    assert result["posX"]["class_error_chance"] == pytest.approx(expected)


def test_bad_input_is_named():
    classes = random_classes(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        decoded_factors(decoder_of(classes), classes[:, :5])
    with pytest.raises(ValueError, match="colour"):
        decoded_factors(decoder_of(classes), classes, factors=("colour",))
    with pytest.raises(ValueError, match="reconstruct returned shape"):
        decoded_factors(lambda x: torch.zeros(len(x), 32, 32), classes)


def test_cli_reports_a_trained_run(smoke_run, tmp_path, capsys):
    from bcvae import cli

    out = tmp_path / "decoded.json"
    assert cli.main(["decoded-factors", str(smoke_run), "--images", "24", "--twins", "16", "--area-twins", "12",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| run | turn apart (°) | centroid gap (px) | code share | told apart, centroids matched |" in text
    assert "| run | shape | scale | orientation | posX | posY |" in text and "| run | scale | posX | posY | square ° | ellipse ° | heart ° |" in text
    assert "| latent | KL (nats) | posterior sd | code sd | decoder gain |" in text
    assert "| run | area gap | area apart, same scale | code share | told apart, areas matched | told apart, same scale |" in text
    saved = json.loads(out.read_text())
    assert saved["images"] == 24 and list(saved["runs"]) == [str(smoke_run)]
    assert len(saved["latent_reading"][str(smoke_run)]["decoder_gain"]) == 10   # smoke.yaml: ten latents
    twins = saved["turn_twins"][str(smoke_run)]
    assert twins["pairs"] == 16 and 0.0 <= twins["told_apart_matched"] <= 1.0 and twins["gap_px"] <= 0.15
    same_area = saved["area_twins"][str(smoke_run)]
    assert same_area["pairs"] == 12 and same_area["area_gap"] <= 0.02 and 0.0 <= same_area["told_apart_matched"] <= 1.0
    for factor, result in saved["runs"][str(smoke_run)].items():
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 < result["chance"] <= 1.0, factor


@pytest.mark.parametrize("args, message", [(["--images", "0"], "--images"), (["--twins", "0"], "--twins"),
                                           (["--area-twins", "0"], "--area-twins"),
                                           (["--latents", "1,x"], "--latents"),
                                           (["--latents", "0,99"], "latents 0 to")])
def test_cli_refuses_bad_arguments_in_one_line(smoke_run, capsys, args, message):
    from bcvae import cli

    assert cli.main(["decoded-factors", str(smoke_run), "--images", "4", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_decoding_from_no_latents_draws_every_image_alike():
    from bcvae.decoded_factors import model_reconstruct
    from bcvae.model import VAE

    torch.manual_seed(0)
    model = VAE(10).eval()
    images = render_dsprites(random_classes(3, np.random.default_rng(0)))
    with torch.no_grad():
        every = model_reconstruct(model)(images)
        none = model_reconstruct(model, latents=[])(images)
        one = model_reconstruct(model, latents=[4])(images)
    assert every.shape == (3, 64, 64)
    assert torch.equal(none[0], none[1]) and torch.equal(none[0], none[2])   # all see the prior's mean
    assert not torch.equal(every[0], every[1]) and not torch.equal(one[0], one[1])


class _LinearModel(torch.nn.Module):
    """μ = the image's mean brightness times a, log σ² = b; logits = W z: every answer is known."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.tensor([3.0, -1.0, 0.0]))
        self.b = torch.nn.Parameter(torch.tensor([-4.0, 0.0, -1.0]))
        self.W = torch.nn.Parameter(torch.randn(64 * 64, 3, generator=g))

    def encode(self, x):
        brightness = x.flatten(1).mean(dim=1, keepdim=True) * 10
        return brightness * self.a, self.b.expand(len(x), 3)

    def decode(self, z):
        return (z @ self.W.T).view(len(z), 1, 64, 64)


def test_latent_reading_of_a_linear_model():
    from torch.distributions import Normal, kl_divergence

    from bcvae.decoded_factors import latent_reading

    model = _LinearModel()
    images = render_dsprites(random_classes(40, np.random.default_rng(3)))
    reading = latent_reading(model, images, chunk=16)
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(images).unsqueeze(1).float())
        sd = torch.exp(0.5 * logvar)
        kl = kl_divergence(Normal(mu, sd), Normal(0.0, 1.0)).mean(0)
        gain = model.W.norm(dim=0)   # a linear decoder's gain on z_j is its column's norm, at every z
    np.testing.assert_allclose(reading["kl"], kl.numpy(), rtol=1e-5)
    np.testing.assert_allclose(reading["posterior_sd"], np.exp(0.5 * np.array([-4.0, 0.0, -1.0])), rtol=1e-6)
    np.testing.assert_allclose(reading["code_sd"], mu.std(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(reading["decoder_gain"], gain.numpy(), rtol=1e-5)


class Recorder:
    """render_dsprites that remembers each picture's classes, so a test encoder can look them up."""

    def __init__(self):
        self.rows = {}

    def __call__(self, classes):
        images = render_dsprites(classes)
        self.rows.update({image.tobytes(): row for image, row in zip(images, classes)})
        return images

    def classes_of(self, images):
        return np.stack([self.rows[image.tobytes()] for image in images])


def test_centroid_following_of_codes_with_known_answers():
    from bcvae.decoded_factors import centroid_following, pixel_centroid, turn_centre

    render = Recorder()
    turn = 0.7
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    encoders = {   # name: (encode, follows)
        "centroid": (lambda im: pixel_centroid(im), 1.0),
        "rotated centroid, three idle latents": (
            lambda im: np.concatenate([pixel_centroid(im) @ rotation.T * 3.0, np.zeros((len(im), 3))], 1), 1.0),
        "half the turn's shift": (
            lambda im: (lambda c: c + 0.5 * (pixel_centroid(im) - c))(turn_centre(render.classes_of(im))), 0.5),
        "the turn's centre only": (lambda im: turn_centre(render.classes_of(im)), 0.0),
    }
    for name, (encode, follows) in encoders.items():
        out = centroid_following(encode, groups=6, render=render)
        assert out["centroid_shift_px"] > 0.8, name          # a heart's centroid circles by 1-2 px
        for axis in ("x", "y"):
            # 1e-3: pixelisation; moving a sprite one column moves its centroid a hair off one pixel
            assert out[axis]["follows"] == pytest.approx(follows, abs=1e-3), (name, axis)
            if follows:
                assert out[axis]["r2"] == pytest.approx(1.0, abs=1e-3), (name, axis)
            else:
                assert np.isnan(out[axis]["r2"]), name
    square = centroid_following(encoders["centroid"][0], shape="square", groups=6, render=render)
    assert square["centroid_shift_px"] < 0.1                   # a square turns about its centre of mass
    with pytest.raises(ValueError, match="shape must be one of"):
        centroid_following(encoders["centroid"][0], shape="star")


def test_removing_the_turn_shift_leaves_a_centroid_code_the_same_for_every_turn():
    from bcvae.decoded_factors import pixel_centroid, remove_turn_shift, translation_gain, turn_centre

    classes = np.repeat(random_classes(5, np.random.default_rng(3)), 40, axis=0)
    classes[:, ORIENTATION] = np.tile(np.arange(40), 5)
    classes[:, FACTOR_NAMES.index("shape")] = 2                 # hearts
    images = render_dsprites(classes)
    # a centroid code moves a pixel per pixel, up to pixelisation
    assert translation_gain(pixel_centroid, classes) == pytest.approx(np.eye(2), abs=1e-2)
    codes = remove_turn_shift(pixel_centroid(images), images, classes, np.eye(2))
    assert codes == pytest.approx(turn_centre(classes), abs=1e-9)
    assert codes.reshape(5, 40, 2).std(axis=1).max() < 1e-9     # the turn is gone from the code
    assert pixel_centroid(images).reshape(5, 40, 2).std(axis=1).max() > 0.5   # and it was there


def test_cli_decodes_without_the_turn_shift(smoke_run, tmp_path, capsys):
    from bcvae import cli

    out = tmp_path / "decoded.json"
    assert cli.main(["decoded-factors", str(smoke_run), "--images", "12", "--without-turn-shift",
                     "--out", str(out)]) == 0
    assert "| run | heart's centroid shift (px) | follows x | R² x | follows y | R² y |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["without_turn_shift"] is True
    following = saved["centroid_following"][str(smoke_run)]
    assert following["centroid_shift_px"] > 0.8 and set(following) == {"centroid_shift_px", "x", "y"}


def test_heart_twins_differ_in_turn_and_share_a_centroid():
    from bcvae.decoded_factors import pixel_centroid, turn_twins_classes

    a, b = turn_twins_classes(40, seed=5)
    again = turn_twins_classes(40, seed=5)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    heart, scale = FACTOR_NAMES.index("shape"), FACTOR_NAMES.index("scale")
    assert (a[:, heart] == 2).all() and (b[:, heart] == 2).all() and (a[:, scale] == b[:, scale]).all()
    # measured here from the renderer's own angles (40 values over [0°, 360°]) and pixels
    degrees = np.linspace(0.0, 360.0, 40)
    turn = np.abs(degrees[a[:, ORIENTATION]] - degrees[b[:, ORIENTATION]])
    assert (np.minimum(turn, 360.0 - turn) >= 60.0).all()
    assert (np.linalg.norm(pixel_centroid(render_dsprites(a)) - pixel_centroid(render_dsprites(b)), axis=1)
            <= 0.15).all()
    assert (a[:, POSX] != b[:, POSX]).any() and (np.abs(a[:, POSX:] - b[:, POSX:]) <= 3).all()


def test_turn_twins_of_codes_and_decoders_with_known_answers():
    from bcvae.decoded_factors import pixel_centroid, turn_twins, turn_twins_classes

    render = Recorder()
    a, b = turn_twins_classes(30, seed=1)
    c = a.copy()
    c[:, ORIENTATION] = b[:, ORIENTATION]
    gap = np.linalg.norm(pixel_centroid(render_dsprites(a)) - pixel_centroid(render_dsprites(b)), axis=1)
    apart = np.linalg.norm(pixel_centroid(render_dsprites(a)) - pixel_centroid(render_dsprites(c)), axis=1)

    def turn_only(images):
        angle = np.linspace(0.0, 2 * np.pi, 40)[render.classes_of(images)[:, ORIENTATION]]
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)

    def exact(images):                            # draws each picture with sure logits
        return torch.from_numpy(images).float() * 60 - 30

    def blur(images):                             # the same drawing for every picture
        return torch.zeros(len(images), 64, 64)

    # a code of the centroid moves by the twins' gap where the turn in place moves it by the centroids' distance
    centroid = turn_twins(pixel_centroid, exact, pairs=30, seed=1, render=render)
    assert centroid["code_share"] == pytest.approx(gap.mean() / apart.mean(), rel=1e-9)
    assert centroid["code_share"] < 0.1 and centroid["gap_px"] == pytest.approx(gap.mean())
    assert centroid["told_apart_matched"] == 1.0 and centroid["told_apart_in_place"] == 1.0
    turned = turn_twins(turn_only, blur, pairs=30, seed=1, render=render)
    assert turned["code_share"] == pytest.approx(1.0, abs=1e-12)     # twins differ in turn as much as in place
    assert turned["told_apart_matched"] == 0.0 and turned["told_apart_in_place"] == 0.0
    twin_of = {image.tobytes(): twin for image, twin in zip(render_dsprites(b), render_dsprites(a))}

    def one_drawing(images):                      # draws a twin b as its twin a, every other picture exactly
        return exact(np.stack([twin_of.get(image.tobytes(), image) for image in images]))

    alike = turn_twins(pixel_centroid, one_drawing, pairs=30, seed=1, render=render)
    assert alike["told_apart_matched"] == 0.0 and alike["told_apart_in_place"] == 1.0
    assert turn_twins(pixel_centroid, pairs=3, render=render).keys() == {
        "pairs", "turn_deg", "gap_px", "apart_px", "code_share"}


def test_area_twins_share_a_pose_and_a_pixel_count_but_not_a_shape():
    from bcvae.decoded_factors import AREA_TWIN_TOL, area_twins_classes

    a, b = area_twins_classes(60, seed=3)
    again = area_twins_classes(60, seed=3)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    shape, scale = FACTOR_NAMES.index("shape"), FACTOR_NAMES.index("scale")
    assert (a[:, shape] != b[:, shape]).all() and (a[:, scale] != b[:, scale]).all()
    assert np.array_equal(a[:, ORIENTATION:], b[:, ORIENTATION:])          # orientation, posX, posY
    na, nb = (render_dsprites(c).reshape(len(c), -1).sum(axis=1).astype(float) for c in (a, b))
    assert (np.abs(na - nb) <= AREA_TWIN_TOL * na).all()


def test_area_twins_of_codes_and_decoders_with_known_answers():
    from bcvae.decoded_factors import area_twins, area_twins_classes

    a, b = area_twins_classes(30, seed=1)
    d = a.copy()
    d[:, FACTOR_NAMES.index("shape")] = b[:, FACTOR_NAMES.index("shape")]
    na, nb, nd = (render_dsprites(c).reshape(len(c), -1).sum(axis=1).astype(float) for c in (a, b, d))

    def area(images):                             # a code of the pixel count alone
        return images.reshape(len(images), -1).sum(axis=1, keepdims=True).astype(float)

    def exact(images):                            # draws each picture with sure logits
        return torch.from_numpy(images).float() * 60 - 30

    def blur(images):                             # the same drawing for every picture
        return torch.zeros(len(images), 64, 64)

    by_area = area_twins(area, exact, pairs=30, seed=1)
    assert by_area["code_share"] == pytest.approx(np.abs(na - nb).mean() / np.abs(na - nd).mean(), rel=1e-12)
    assert by_area["code_share"] < 0.1 and by_area["area_gap"] == pytest.approx((np.abs(nb - na) / na).mean())
    assert by_area["area_apart"] > 0.1                                     # one scale: areas 20-40 % apart
    assert by_area["told_apart_matched"] == 1.0 and by_area["told_apart_same_scale"] == 1.0
    blurred = area_twins(area, blur, pairs=30, seed=1)
    assert blurred["told_apart_matched"] == 0.0 and blurred["told_apart_same_scale"] == 0.0
    twin_of = {image.tobytes(): twin for image, twin in zip(render_dsprites(b), render_dsprites(a))}

    def by_area_only(images):                     # draws a twin b as its twin a, every other picture exactly
        return exact(np.stack([twin_of.get(image.tobytes(), image) for image in images]))

    alike = area_twins(area, by_area_only, pairs=30, seed=1)
    assert alike["told_apart_matched"] == 0.0 and alike["told_apart_same_scale"] == 1.0
    assert area_twins(area, pairs=3).keys() == {"pairs", "area_gap", "area_apart", "code_share"}
