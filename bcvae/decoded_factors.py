"""What a model's decoder reads: the factors its reconstructions draw, and how finely it reads each latent.

The metrics read factors from the code; a classifier that finds nothing there does not
show that the information is gone, only that it is not where that classifier looks. This
asks the decoder instead. Reconstruct an image x from its posterior mean; then, for one
factor at a time, render every image that differs from x in that factor alone and pick the
one the reconstruction's likelihood prefers. The factor counts as drawn when the pick is
x itself (pixel for pixel, so orientations 0 and 2π, one picture, both count). Chance is
what a uniformly random pick scores: the share of the candidates that are x's picture.

Beside it, :func:`latent_reading` gives each latent's posterior width and the decoder's gain
on it, |∂ logits / ∂z_j|: a latent whose posterior is a thousand times narrower than the
prior, read by a decoder a thousand times as steep, can carry far more than one factor.
:func:`centroid_following` asks whether the position code moves with a sprite's centre of mass
when the sprite turns (a heart's circles its position by 1–2 px), ``--without-turn-shift``
decodes with that movement taken out of the code, :func:`turn_twins` asks whether a code
tells two turns of a heart apart when their centres of mass coincide, and :func:`area_twins`
whether it tells two shapes apart when they cover the same pixels::

    python -m bcvae decoded-factors pretrained/capacity25 pretrained/beta4 --images 2000
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import render_dsprites, sprite_area
from bcvae.encode import make_encode
from bcvae.data.render import FACTOR_NAMES, FACTOR_SIZES, FACTOR_VALUES, SHAPE_NAMES as SHAPES
from bcvae.errors import ArgumentParser
from bcvae.latents import random_classes
from bcvae.losses import kl_per_dim
from bcvae.metrics import DEFAULT_FACTORS

Reconstruct = Callable[[np.ndarray], torch.Tensor]
"""uint8 images ``(B, 64, 64)`` -> decoder logits ``(B, 64, 64)``."""

ORDERED = ("scale", "posX", "posY")
"""Factors whose classes are ordered steps: their miss is also given in classes."""
SYMMETRY_DEG = (90.0, 180.0, 360.0)
"""The turn after which each shape (``SHAPES`` order) looks the same again."""
READING_IMAGES = 1024
"""Images behind :func:`latent_reading` in the command (ten forward-mode passes each)."""


def candidate_nll(logits: torch.Tensor, candidates: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """−log p(candidate | logits) of each candidate picture, summed over pixels.

    logits : (B, 64, 64); candidates : (B, V, 64, 64) in {0, 1}; returns (B, V). ``"gaussian"``
    is the squared error of sigmoid(logits), as :func:`bcvae.losses.recon_nll` scores it.
    """
    target = candidates.float()
    params = logits.unsqueeze(1).expand_as(target)
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(params, target, reduction="none")
    elif likelihood == "gaussian":
        nll = (torch.sigmoid(params) - target) ** 2
    else:
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    return nll.sum(dim=(2, 3))


def _one_factor(x: np.ndarray, logits: torch.Tensor, classes: np.ndarray, column: int,
                render: Callable[[np.ndarray], np.ndarray], likelihood: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image: the candidate value the reconstruction prefers (B,), whether its picture is x's (B,)
    and the share of candidates whose picture is x's (B,)."""
    size = FACTOR_SIZES[column]
    varied = np.repeat(classes, size, axis=0)
    varied[:, column] = np.tile(np.arange(size), len(classes))
    candidates = render(varied).reshape(len(classes), size, *x.shape[1:])
    same = (candidates == x[:, None]).all(axis=(2, 3))             # (B, V): candidates that are x's picture
    pick = candidate_nll(logits, torch.from_numpy(candidates), likelihood).argmin(dim=1).numpy()
    return pick, same[np.arange(len(classes)), pick], same.mean(axis=1)


def angle_error(a: np.ndarray, b: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Degrees between orientation classes ``a`` and ``b`` (broadcast) up to the shape's symmetry.

    Class o is the angle 360°·o/39 (dSprites' ``linspace(0, 2π, 40)``); a square looks the same
    every 90°, an ellipse every 180°, a heart only every 360°.
    """
    period = np.asarray(SYMMETRY_DEG)[shape]
    diff = np.abs(np.asarray(a) - np.asarray(b)) * 360.0 / (FACTOR_SIZES[FACTOR_NAMES.index("orientation")] - 1)
    diff = np.mod(diff, period)
    return np.minimum(diff, period - diff)


def _summary(values: dict[str, np.ndarray], shape: np.ndarray) -> dict:
    """Means of per-image ``values`` over all images and over each shape's."""
    out = {k: float(v.mean()) for k, v in values.items()}
    out["by_shape"] = {name: {**{k: float(v[shape == s].mean()) for k, v in values.items()},
                              "images": int((shape == s).sum())}
                       for s, name in enumerate(SHAPES) if (shape == s).any()}
    return out


@torch.no_grad()
def decoded_factors(reconstruct: Reconstruct, classes: np.ndarray, *, likelihood: str = "bernoulli",
                    factors: Sequence[str] = DEFAULT_FACTORS, render: Callable[[np.ndarray], np.ndarray] = render_dsprites,
                    chunk: int = 128) -> dict:
    """How often the reconstruction of each image draws each factor's true value.

    classes : (N, 6) latent classes of the images to reconstruct. Returns, per factor name,
    ``{"accuracy", "chance", "by_shape": {shape: {"accuracy", "chance", "images"}}}``:
    the share of images whose reconstruction prefers x's own picture over every picture that
    differs from it in that factor only, and the share a uniformly random pick gets.
    Orientation adds ``angle_error`` and ``angle_error_chance``: the mean angle (degrees, up to
    the shape's symmetry) between the preferred and the true orientation, and its mean over
    all candidates. A square's classes ten apart are 2.3° apart, so its exact-picture accuracy
    asks for a few edge pixels; the angle does not. Scale and the positions add
    ``class_error`` and ``class_error_chance``: the mean number of classes the pick is off.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"classes must be (N, {len(FACTOR_NAMES)}) latent classes, got shape {classes.shape}")
    unknown = [f for f in factors if f not in FACTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown factor(s) {unknown}; choose from {FACTOR_NAMES}")
    rows = {f: [] for f in factors}
    for start in range(0, len(classes), chunk):
        part = classes[start:start + chunk]
        x = render(part)
        logits = reconstruct(x).float()
        if logits.shape != x.shape:
            raise ValueError(f"reconstruct returned shape {tuple(logits.shape)} for images {x.shape}")
        for f in factors:
            rows[f].append(_one_factor(x, logits, part, FACTOR_NAMES.index(f), render, likelihood))
    shape = classes[:, FACTOR_NAMES.index("shape")]
    out = {}
    for f in factors:
        pick, hit, share = (np.concatenate(c) for c in zip(*rows[f]))
        values = {"accuracy": hit, "chance": share}
        true = classes[:, FACTOR_NAMES.index(f)]
        every = np.arange(FACTOR_SIZES[FACTOR_NAMES.index(f)])
        if f == "orientation":
            values["angle_error"] = angle_error(pick, true, shape)
            values["angle_error_chance"] = angle_error(every[None], true[:, None], shape[:, None]).mean(axis=1)
        elif f in ORDERED:
            values["class_error"] = np.abs(pick - true).astype(float)
            values["class_error_chance"] = np.abs(every[None] - true[:, None]).mean(axis=1)
        out[f] = _summary(values, shape)
    return out


def model_reconstruct(model: torch.nn.Module, latents: Sequence[int] | None = None) -> Reconstruct:
    """The reconstruction from the posterior mean: images -> decoder logits, as in the figures.

    latents : decode from these latents only, every other set to the prior's mean 0 (all by default).
    """
    device = next(model.parameters()).device
    decode = _decoder(model, latents)

    @torch.no_grad()
    def reconstruct(images: np.ndarray) -> torch.Tensor:
        mu, _ = model.encode(torch.from_numpy(images).to(device).unsqueeze(1).float())
        return decode(mu)
    return reconstruct


def _decoder(model: torch.nn.Module, latents: Sequence[int] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Codes (B, D) -> logits (B, 64, 64) on the CPU, every latent outside ``latents`` set to 0."""
    device = next(model.parameters()).device
    keep = None
    if latents is not None:
        keep = torch.zeros(model.z_dim, dtype=torch.bool, device=device)
        keep[list(latents)] = True

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        z = z.to(device)
        if keep is not None:
            z = torch.where(keep, z, torch.zeros_like(z))
        return model.decode(z).squeeze(1).cpu()   # compared with candidates rendered on the CPU
    return decode


@torch.no_grad()
def latent_reading(model: torch.nn.Module, images: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
    """How finely the decoder reads each latent, at the posterior means of ``images`` (N, 64, 64) uint8.

    Returns (D,) arrays: ``kl`` (nats, mean over the images), ``posterior_sd`` (root mean σ_j²),
    ``code_sd`` (standard deviation of μ_j over the images) and ``decoder_gain``: the root mean
    square over images of ‖∂ logits / ∂z_j‖ (over all pixels) at z = μ, a forward-mode derivative.
    """
    device = next(model.parameters()).device
    mus, logvars, gain = [], [], []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk]).to(device).unsqueeze(1).float()
        mu, logvar = model.encode(x)
        mus.append(mu)
        logvars.append(logvar)
        columns = []
        for j in range(mu.shape[1]):
            tangent = torch.zeros_like(mu)
            tangent[:, j] = 1.0
            with fwad.dual_level():
                d_logits = fwad.unpack_dual(model.decode(fwad.make_dual(mu, tangent))).tangent
            columns.append(d_logits.flatten(1).square().sum(dim=1))
        gain.append(torch.stack(columns, dim=1))
    mu, logvar, gain = (torch.cat(t).double().cpu() for t in (mus, logvars, gain))
    return {"kl": kl_per_dim(mu, logvar).numpy(), "posterior_sd": logvar.exp().mean(0).sqrt().numpy(),
            "code_sd": mu.std(0).numpy(), "decoder_gain": gain.mean(0).sqrt().numpy()}


def pixel_centroid(images: np.ndarray) -> np.ndarray:
    """Centre of mass of the lit pixels, ``(N, 2)`` as (x, y) in pixels, of uint8 images ``(N, H, W)``."""
    weights = images.astype(np.float64)
    rows, cols = np.indices(images.shape[1:])
    mass = weights.sum(axis=(1, 2))
    return np.stack([(weights * cols).sum(axis=(1, 2)) / mass, (weights * rows).sum(axis=(1, 2)) / mass], axis=1)


def centroid_following(encode: Callable[[np.ndarray], np.ndarray], *, shape: str = "heart", groups: int = 60,
                       seed: int = 0, render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> dict:
    """How far a code's position moves when a sprite turns, against when it is translated.

    A heart's centre of mass circles its position by 1–2 px as it turns (a square's and an
    ellipse's by about 0.03 px of pixelisation), so a code of the centroid carries a heart's
    turn in its position latents. For ``groups`` random (scale, posX, posY), positions off the
    border, every orientation of ``shape`` is rendered and encoded (encode: uint8 images
    ``(N, 64, 64)`` -> codes ``(N, D)``). Per axis: t, the code's change per pixel of translation
    (the same images one class either way, mean over images, (D,)); then the within-group
    movement of the code along t̂ regressed on the within-group shift of the centroid.
    Returns ``{"x": {...}, "y": {...}, "centroid_shift_px"}``: per axis ``translation_per_px``
    = |t|, ``follows`` = slope / |t| (1: the code cannot tell a turn's shift from a translation;
    0: it ignores it) and ``r2``, the share of that movement the centroid explains (nan when
    the code does not move); ``centroid_shift_px`` is the sd of the turn's centroid shift.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if groups < 2:
        raise ValueError(f"groups must be >= 2, got {groups}")
    rng = np.random.default_rng(seed)
    sizes = dict(zip(FACTOR_NAMES, FACTOR_SIZES))
    base = random_classes(groups, rng)
    base[:, FACTOR_NAMES.index("shape")] = SHAPES.index(shape)
    for axis in ("posX", "posY"):
        base[:, FACTOR_NAMES.index(axis)] = rng.integers(1, sizes[axis] - 1, groups)
    classes = np.repeat(base, sizes["orientation"], axis=0)
    classes[:, FACTOR_NAMES.index("orientation")] = np.tile(np.arange(sizes["orientation"]), groups)
    images = render(classes)
    code = np.asarray(encode(images), dtype=np.float64)
    centre = pixel_centroid(images)

    def within(v: np.ndarray) -> np.ndarray:
        """Less each group's mean: a group is one sprite's turns, consecutive rows."""
        per_group = v.reshape(groups, sizes["orientation"], -1)
        return (per_group - per_group.mean(axis=1, keepdims=True)).reshape(v.shape)

    moved, shifted = within(code), within(centre)
    gain = translation_gain(encode, classes, render)
    out = {"centroid_shift_px": float(shifted.std(axis=0).mean())}
    for a, axis in enumerate(("x", "y")):
        t = gain[a]
        along = moved @ t / np.linalg.norm(t)
        slope = float(along @ shifted[:, a] / (shifted[:, a] @ shifted[:, a]))
        still = np.abs(along).max() <= 1e-9 * np.linalg.norm(t)     # moves under a billionth of a pixel
        r2 = float("nan") if still else 1.0 - float(((along - slope * shifted[:, a]) ** 2).sum() / (along @ along))
        out[axis] = {"translation_per_px": float(np.linalg.norm(t)), "follows": slope / float(np.linalg.norm(t)),
                     "r2": r2}
    return out


def translation_gain(encode: Callable[[np.ndarray], np.ndarray], classes: np.ndarray,
                     render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> np.ndarray:
    """The code's change per pixel that the sprite's centre of mass moves, ``(2, D)`` for x then y.

    Each image of ``classes`` (N, 6) is moved one class either way along the axis (positions on
    the border first moved one class in); the code's difference over the centroid's, mean over images.
    """
    classes = np.array(classes)
    gain = []
    for a, axis in enumerate(("posX", "posY")):
        column = FACTOR_NAMES.index(axis)
        classes[:, column] = np.clip(classes[:, column], 1, FACTOR_SIZES[column] - 2)
        ahead, behind = _one_class_either_way(classes, axis, render)
        pixels = pixel_centroid(ahead)[:, a] - pixel_centroid(behind)[:, a]
        codes = np.asarray(encode(ahead), np.float64) - np.asarray(encode(behind), np.float64)
        gain.append((codes / pixels[:, None]).mean(axis=0))
    return np.stack(gain)


def turn_centre(classes: np.ndarray, render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> np.ndarray:
    """Mean centre of mass over every orientation of each sprite in ``classes`` (N, 6): ``(N, 2)`` px."""
    turns = FACTOR_SIZES[FACTOR_NAMES.index("orientation")]
    every = np.repeat(classes, turns, axis=0)
    every[:, FACTOR_NAMES.index("orientation")] = np.tile(np.arange(turns), len(classes))
    return pixel_centroid(render(every)).reshape(len(classes), turns, 2).mean(axis=1)


def remove_turn_shift(codes: np.ndarray, images: np.ndarray, classes: np.ndarray, gain: np.ndarray,
                      render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> np.ndarray:
    """Codes ``(N, D)`` less the part that follows the turn's centroid shift: z − (c − c̄)·gain.

    c is each image's centre of mass, c̄ its mean over the sprite's turns (:func:`turn_centre`)
    and gain the code's change per pixel of translation ``(2, D)`` (:func:`translation_gain`).
    """
    return codes - (pixel_centroid(images) - turn_centre(classes, render)) @ gain


def without_turn_shift(model: torch.nn.Module, classes: np.ndarray, latents: Sequence[int] | None = None,
                       render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> Reconstruct:
    """:func:`model_reconstruct` of the images of ``classes`` with the turn's centroid shift taken out
    of their codes (:func:`remove_turn_shift`, gain measured on the same images). A turn that the
    reconstruction stops drawing was carried by the position code as a shift of the centre of mass."""
    encode = make_encode(model, next(model.parameters()).device, compile="off")
    gain = translation_gain(encode, classes, render)
    by_picture = {image.tobytes(): row for image, row in zip(render(classes), classes)}
    decode = _decoder(model, latents)

    def reconstruct(images: np.ndarray) -> torch.Tensor:
        rows = np.stack([by_picture[image.tobytes()] for image in images])   # same picture: same turn centre
        codes = remove_turn_shift(encode(images), images, rows, gain, render)
        return decode(torch.from_numpy(codes).float())
    return reconstruct


TWIN_MIN_TURN_DEG = 60.0
"""Twins differ in turn by at least this much (a heart looks the same again only after 360°)."""
TWIN_MAX_GAP_PX = 0.15
"""...and their centres of mass by at most this much: a seventh of a class of position."""
TWIN_REACH = 3
"""Classes of position either way searched for a twin: a heart's centroid circles by 1–2 px."""


def turn_twins_classes(n: int, *, seed: int = 0,
                       render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of hearts, ``(a, b)`` classes ``(n, 6)`` each, of one scale, at least
    ``TWIN_MIN_TURN_DEG`` apart in turn, whose centres of mass lie within ``TWIN_MAX_GAP_PX``.

    A turned heart's centroid lies 1–2 px off its position, so a heart moved a class or two
    and turned the other way can put its centroid where the first one's was. For each random
    heart a (positions ``TWIN_REACH`` classes off the border), every turn at a's position is
    rendered; b is the turn and shift of up to ``TWIN_REACH`` classes whose predicted centroid
    (turn's centroid plus the shift in pixels) is nearest a's, rendered to check the gap.
    Hearts whose nearest twin is further are drawn again.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    col = {name: FACTOR_NAMES.index(name) for name in ("shape", "orientation", "posX", "posY")}
    turns = FACTOR_SIZES[col["orientation"]]
    angle = np.degrees(FACTOR_VALUES[col["orientation"]])        # 0 and 360 are one picture
    apart = np.abs(angle[:, None] - angle[None, :]) % 360.0
    far = np.minimum(apart, 360.0 - apart) >= TWIN_MIN_TURN_DEG  # (turn a, turn b)
    shifts = np.array([(i, j) for i in range(-TWIN_REACH, TWIN_REACH + 1)
                       for j in range(-TWIN_REACH, TWIN_REACH + 1) if (i, j) != (0, 0)])
    found_a, found_b = [], []
    for _ in range(20):
        a = random_classes(2 * n, rng)
        a[:, col["shape"]] = SHAPES.index("heart")
        for axis in ("posX", "posY"):
            a[:, col[axis]] = rng.integers(TWIN_REACH, FACTOR_SIZES[col[axis]] - TWIN_REACH, len(a))
        every = np.repeat(a, turns, axis=0)
        every[:, col["orientation"]] = np.tile(np.arange(turns), len(a))
        centre = pixel_centroid(render(every)).reshape(len(a), turns, 2)
        px = translation_px(a, render)                                           # (N, 2)
        own = centre[np.arange(len(a)), a[:, col["orientation"]]]               # (N, 2)
        guess = centre[:, None, :, :] + (shifts[None, :, None, :] * px[:, None, None, :])  # (N, S, T, 2)
        gap = np.linalg.norm(guess - own[:, None, None, :], axis=-1)
        gap[~np.broadcast_to(far[a[:, col["orientation"]]][:, None, :], gap.shape)] = np.inf
        best = gap.reshape(len(a), -1).argmin(axis=1)
        s, t = np.unravel_index(best, gap.shape[1:])
        b = a.copy()
        b[:, col["orientation"]] = t
        b[:, col["posX"]] += shifts[s, 0]
        b[:, col["posY"]] += shifts[s, 1]
        true_gap = np.linalg.norm(pixel_centroid(render(b)) - own, axis=1)
        keep = true_gap <= TWIN_MAX_GAP_PX
        found_a.append(a[keep])
        found_b.append(b[keep])
        if sum(len(f) for f in found_a) >= n:
            return np.concatenate(found_a)[:n], np.concatenate(found_b)[:n]
    raise RuntimeError(f"bug: under {n} heart twins found in 20 rounds of {2 * n} hearts")


def translation_px(classes: np.ndarray, render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> np.ndarray:
    """Pixels the centre of mass moves per class of posX and of posY, ``(N, 2)``, each sprite of
    ``classes`` (N, 6) moved one class either way (about 1.03 px, up to pixelisation)."""
    out = []
    for a, axis in enumerate(("posX", "posY")):
        ahead, behind = _one_class_either_way(classes, axis, render)
        out.append((pixel_centroid(ahead)[:, a] - pixel_centroid(behind)[:, a]) / 2)
    return np.stack(out, axis=1)


def _one_class_either_way(classes: np.ndarray, axis: str,
                          render: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The sprites of ``classes`` (N, 6) rendered one class of ``axis`` ahead and one behind."""
    step = np.zeros_like(classes)
    step[:, FACTOR_NAMES.index(axis)] = 1
    return render(classes + step), render(classes - step)


def turn_twins(encode: Callable[[np.ndarray], np.ndarray], reconstruct: Reconstruct | None = None, *,
               pairs: int = 500, seed: int = 0, likelihood: str = "bernoulli",
               render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> dict:
    """Can the code tell two turns of a heart apart when their centres of mass coincide?

    A code of the centroid carries a heart's turn only while the position is known; for
    twins (:func:`turn_twins_classes`: a, and b turned at least 60° the other way and moved a
    class or two, centroids within 0.15 px) it gives nearly the same code. Against each
    twin pair, c is a turned to b's orientation in place (the same turns, centroids 1–3 px
    apart). Returns:

    * ``code_share``: mean ‖z_a − z_b‖ over mean ‖z_a − z_c‖, the part of the code's
      answer to b's turn that is left when the centroid is matched (a centroid code:
      the gap over the centroids' distance, under 0.15; a code of the turn alone: 1);
    * with ``reconstruct``: ``told_apart_matched``, the share of pairs where each
      twin's reconstruction prefers its own picture to the other's (likelihood), and
      ``told_apart_in_place`` the same for a and c (chance of a blind pick 0.25;
      identical reconstructions 0);
    * ``gap_px`` and ``apart_px``: mean centroid distance of twins and of a and c;
      ``turn_deg``: their mean turn apart.

    encode : uint8 images (N, 64, 64) -> codes (N, D).
    """
    a, b = turn_twins_classes(pairs, seed=seed, render=render)
    col = FACTOR_NAMES.index("orientation")
    c = a.copy()
    c[:, col] = b[:, col]
    xa, xb, xc = render(a), render(b), render(c)
    ca, cb, cc = (pixel_centroid(x) for x in (xa, xb, xc))
    turn = np.abs(np.degrees(FACTOR_VALUES[col][a[:, col]] - FACTOR_VALUES[col][b[:, col]])) % 360.0
    out = {"pairs": pairs,
           "turn_deg": float(np.minimum(turn, 360.0 - turn).mean()),
           "gap_px": float(np.linalg.norm(ca - cb, axis=1).mean()),
           "apart_px": float(np.linalg.norm(ca - cc, axis=1).mean())}
    return {**out, **_twin_scores(encode, reconstruct, xa, xb, xc, likelihood, "in_place")}


def _twin_scores(encode: Callable[[np.ndarray], np.ndarray], reconstruct: Reconstruct | None,
                 xa: np.ndarray, xb: np.ndarray, xc: np.ndarray, likelihood: str, other: str) -> dict:
    """``code_share`` (mean ‖z_a − z_b‖ over mean ‖z_a − z_c‖) of twins a, b against a pair a, c, and
    with ``reconstruct`` ``told_apart_matched`` (a, b) and ``told_apart_<other>`` (a, c): :func:`_told_apart`.
    xa, xb, xc : uint8 images (N, 64, 64)."""
    za, zb, zc = (np.asarray(encode(x), dtype=np.float64) for x in (xa, xb, xc))
    moved = np.linalg.norm(za - zc, axis=1).mean()
    out = {"code_share": float(np.linalg.norm(za - zb, axis=1).mean() / moved) if moved > 0 else float("nan")}
    if reconstruct is not None:
        out["told_apart_matched"] = _told_apart(reconstruct, xa, xb, likelihood)
        out[f"told_apart_{other}"] = _told_apart(reconstruct, xa, xc, likelihood)
    return out


AREA_TWIN_TOL = 0.02
"""Area twins cover the same number of pixels within this fraction of the first one's count."""


def area_twins_classes(n: int, *, seed: int = 0,
                       render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of sprites, ``(a, b)`` classes ``(n, 6)`` each, in one pose (orientation and
    position) and of different shapes, whose pixel counts agree within ``AREA_TWIN_TOL``.

    At one scale the three shapes differ in area by 20–40 % (a square covers more pixels than an
    ellipse, an ellipse more than a heart), so a decoder that draws only how many pixels to turn
    on also picks the right shape among the shapes of the true scale. A larger heart and a smaller
    square can cover the same pixels: such twins differ in shape and scale, not in area. For each
    random sprite a, the eighteen (scale, shape) sprites at a's pose are rendered; b is the one of
    another shape whose count is nearest a's. Sprites without a twin that close are drawn again.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    shape, scale = FACTOR_NAMES.index("shape"), FACTOR_NAMES.index("scale")
    cells = np.array([(h, s) for h in range(FACTOR_SIZES[shape]) for s in range(FACTOR_SIZES[scale])])
    found_a, found_b = [], []
    for _ in range(20):
        a = random_classes(2 * n, rng)
        every = np.repeat(a, len(cells), axis=0)
        every[:, shape], every[:, scale] = np.tile(cells[:, 0], len(a)), np.tile(cells[:, 1], len(a))
        counts = sprite_area(render(every)).reshape(len(a), len(cells))                    # (N, 18)
        own = counts[np.arange(len(a)), a[:, shape] * FACTOR_SIZES[scale] + a[:, scale]]
        gap = np.abs(counts - own[:, None]) / own[:, None]
        gap[cells[None, :, 0] == a[:, shape, None]] = np.inf                          # another shape only
        best = gap.argmin(axis=1)
        keep = gap[np.arange(len(a)), best] <= AREA_TWIN_TOL
        b = a.copy()
        b[:, shape], b[:, scale] = cells[best, 0], cells[best, 1]
        found_a.append(a[keep])
        found_b.append(b[keep])
        if sum(len(f) for f in found_a) >= n:
            return np.concatenate(found_a)[:n], np.concatenate(found_b)[:n]
    raise RuntimeError(f"bug: under {n} area twins found in 20 rounds of {2 * n} sprites")


def area_twins(encode: Callable[[np.ndarray], np.ndarray], reconstruct: Reconstruct | None = None, *,
               pairs: int = 500, seed: int = 0, likelihood: str = "bernoulli",
               render: Callable[[np.ndarray], np.ndarray] = render_dsprites) -> dict:
    """Do the code and the decoder tell shapes apart when the areas are matched?

    For twins (:func:`area_twins_classes`: a, and b of another shape and scale covering the same
    pixels within 2 %) against d, a with b's shape at a's own scale (areas 20–40 % apart).
    Returns:

    * ``code_share``: mean ‖z_a − z_b‖ over mean ‖z_a − z_d‖, the part of the code's answer to a
      change of shape that is left when the area is matched (a code of the area alone: the twins'
      area gap over the same-scale pairs', a few hundredths; a code of shape alone: 1);
    * with ``reconstruct``: ``told_apart_matched``, the share of twin pairs where each twin's
      reconstruction prefers its own picture to the other's (likelihood), and
      ``told_apart_same_scale`` the same for a and d;
    * ``area_gap`` and ``area_apart``: the mean relative difference in pixels of twins, and of a and d.

    encode : uint8 images (N, 64, 64) -> codes (N, D).
    """
    a, b = area_twins_classes(pairs, seed=seed, render=render)
    shape = FACTOR_NAMES.index("shape")
    d = a.copy()
    d[:, shape] = b[:, shape]
    xa, xb, xd = render(a), render(b), render(d)
    na, nb, nd = (sprite_area(x) for x in (xa, xb, xd))
    out = {"pairs": pairs, "area_gap": float((np.abs(nb - na) / na).mean()),
           "area_apart": float((np.abs(nd - na) / na).mean())}
    return {**out, **_twin_scores(encode, reconstruct, xa, xb, xd, likelihood, "same_scale")}


def _told_apart(reconstruct: Reconstruct, x: np.ndarray, y: np.ndarray, likelihood: str, chunk: int = 128) -> float:
    """Share of pairs (x_i, y_i), uint8 ``(N, 64, 64)`` each, where x_i's reconstruction prefers x_i
    to y_i and y_i's prefers y_i to x_i (strictly)."""
    both = []
    for start in range(0, len(x), chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        pair = torch.from_numpy(np.stack([xs, ys], axis=1))                       # (B, 2, 64, 64)
        nx = candidate_nll(reconstruct(xs), pair, likelihood)
        ny = candidate_nll(reconstruct(ys), pair, likelihood)
        both.append(((nx[:, 0] < nx[:, 1]) & (ny[:, 1] < ny[:, 0])).numpy())
    return float(np.concatenate(both).mean())


def reading_markdown(reading: dict[str, np.ndarray]) -> str:
    """One row per latent, the most informative first."""
    lines = ["| latent | KL (nats) | posterior sd | code sd | decoder gain |", "|---|---:|---:|---:|---:|"]
    for j in np.argsort(-reading["kl"], kind="stable"):
        lines.append(f"| z{j} | {reading['kl'][j]:.2f} | {reading['posterior_sd'][j]:.2g} | "
                     f"{reading['code_sd'][j]:.2f} | {reading['decoder_gain'][j]:.3g} |")
    return "\n".join(lines)


def following_markdown(following: dict[str, dict]) -> str:
    """One row per run: :func:`centroid_following` along x and y."""
    lines = ["| run | heart's centroid shift (px) | follows x | R² x | follows y | R² y |", "|---|---:|---:|---:|---:|---:|"]
    for run, f in following.items():
        lines.append(f"| {run} | {f['centroid_shift_px']:.2f} | {f['x']['follows']:.2f} | {f['x']['r2']:.2f} | "
                     f"{f['y']['follows']:.2f} | {f['y']['r2']:.2f} |")
    return "\n".join(lines)


def twins_markdown(twins: dict[str, dict]) -> str:
    """One row per run: :func:`turn_twins`."""
    lines = ["| run | turn apart (°) | centroid gap (px) | code share | told apart, centroids matched | "
             "told apart, in place |", "|---|---:|---:|---:|---:|---:|"]
    for run, t in twins.items():
        lines.append(f"| {run} | {t['turn_deg']:.0f} | {t['gap_px']:.2f} | {t['code_share']:.2f} | "
                     f"{t['told_apart_matched']:.2f} | {t['told_apart_in_place']:.2f} |")
    return "\n".join(lines)


def area_twins_markdown(twins: dict[str, dict]) -> str:
    """One row per run: :func:`area_twins`."""
    lines = ["| run | area gap | area apart, same scale | code share | told apart, areas matched | "
             "told apart, same scale |", "|---|---:|---:|---:|---:|---:|"]
    for run, t in twins.items():
        lines.append(f"| {run} | {t['area_gap']:.1%} | {t['area_apart']:.1%} | {t['code_share']:.2f} | "
                     f"{t['told_apart_matched']:.2f} | {t['told_apart_same_scale']:.2f} |")
    return "\n".join(lines)


def markdown(rows: dict[str, dict]) -> str:
    """Accuracy (chance) of each factor, one row per run."""
    factors = next(iter(rows.values())).keys()
    lines = ["| run | " + " | ".join(factors) + " |", "|---|" + "---:|" * len(factors)]
    for run, result in rows.items():
        cells = [f"{result[f]['accuracy']:.2f} ({result[f]['chance']:.2f})" for f in factors]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def miss_markdown(rows: dict[str, dict]) -> str:
    """How far the picks miss (chance): scale and positions in classes, each shape's turn in degrees."""
    lines = ["| run | scale | posX | posY | " + " | ".join(f"{s} °" for s in SHAPES) + " |", "|---|" + "---:|" * 6]
    for run, result in rows.items():
        cells = [f"{result[f]['class_error']:.2f} ({result[f]['class_error_chance']:.2f})" if f in result else ""
                 for f in ORDERED]
        by = result["orientation"]["by_shape"] if "orientation" in result else {}
        cells += [f"{by[s]['angle_error']:.1f} ({by[s]['angle_error_chance']:.1f})" if s in by else "" for s in SHAPES]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae decoded-factors", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (runs/<exp>/fold<k>) or pretrained/<experiment>")
    p.add_argument("--images", type=int, default=2000, help="images drawn from uniform factors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latents", help="decode from these latents only (comma-separated indices; the rest "
                                      "set to 0, the prior's mean), e.g. a model's active ones")
    p.add_argument("--without-turn-shift", action="store_true",
                   help="decode from codes less the part that follows a turn's shift of the centre of mass "
                        "(a heart's centroid circles its position by 1-2 px as it turns)")
    p.add_argument("--twins", type=int, default=500,
                   help="pairs of hearts turned at least 60 degrees apart with coinciding centres of mass")
    p.add_argument("--area-twins", type=int, default=500,
                   help="pairs of sprites of different shape and scale, in one pose, covering the same pixels "
                        "within 2 percent")
    p.add_argument("--out", help="write every run's result (with orientation by shape) to this JSON file")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    for flag, value in (("--twins", args.twins), ("--area-twins", args.area_twins)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    try:
        latents = None if args.latents is None else [int(j) for j in args.latents.split(",")]
    except ValueError:
        p.error(f"--latents {args.latents!r} is not a comma-separated list of latent indices")
    classes = random_classes(args.images, np.random.default_rng(args.seed))
    rows, readings, following, twins, same_area = {}, {}, {}, {}, {}
    for run in args.runs:
        model, cfg, _ = load_model(checkpoint_path(Path(run)), torch.device("cpu"))
        if latents is not None and not all(0 <= j < model.z_dim for j in latents):
            p.error(f"--latents {args.latents!r}: {run} has latents 0 to {model.z_dim - 1}")
        reconstruct = (without_turn_shift(model, classes, latents) if args.without_turn_shift
                       else model_reconstruct(model, latents))
        rows[run] = decoded_factors(reconstruct, classes, likelihood=cfg.loss.likelihood)
        readings[run] = latent_reading(model, render_dsprites(classes[:READING_IMAGES]))
        encode = make_encode(model, torch.device("cpu"), compile="off")
        following[run] = centroid_following(encode, seed=args.seed)
        twins[run] = turn_twins(encode, model_reconstruct(model, latents), pairs=args.twins, seed=args.seed,
                                likelihood=cfg.loss.likelihood)
        same_area[run] = area_twins(encode, model_reconstruct(model, latents), pairs=args.area_twins,
                                    seed=args.seed, likelihood=cfg.loss.likelihood)
    print(f"{args.images:,} images (seed {args.seed}); accuracy of the reconstruction's pick (chance):")
    print(markdown(rows))
    print("mean miss of the pick (chance): classes of scale and position; degrees of each shape's turn, "
          "up to its symmetry:")
    print(miss_markdown(rows))
    for run, reading in readings.items():
        print(f"{run}: how finely the decoder reads each latent ({min(args.images, READING_IMAGES):,} images):")
        print(reading_markdown(reading))
    print("how far the position code follows a heart's centre of mass when the heart turns (1: as far as "
          "when it is translated; 0: not at all), and the share of that movement the centroid explains:")
    print(following_markdown(following))
    print(f"{args.twins} heart twins: turned at least {TWIN_MIN_TURN_DEG:g} degrees apart, centres of mass "
          f"within {TWIN_MAX_GAP_PX:g} px (code share: what is left of the code's answer to the turn when the "
          "centroid is matched; told apart: each reconstruction prefers its own picture):")
    print(twins_markdown(twins))
    print(f"{args.area_twins} area twins: one pose, another shape and scale, pixel counts within "
          f"{AREA_TWIN_TOL:.0%} (code share: what is left of the code's answer to a change of shape when the "
          "area is matched; same scale: the first twin beside its own scale in the other's shape):")
    print(area_twins_markdown(same_area))
    if args.out:
        record = {"images": args.images, "seed": args.seed, "latents": latents,
                  "without_turn_shift": args.without_turn_shift, "runs": rows,
                  "latent_reading": {run: {k: v.tolist() for k, v in r.items()} for run, r in readings.items()},
                  "centroid_following": following, "turn_twins": twins, "area_twins": same_area}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0
