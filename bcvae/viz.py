"""Pictures of a run: reconstructions, latent traversals (grid + GIF), KL per latent
over training, loss curves, and which latent encodes which dSprites factor.

Two layers:

* uint8 array builders (:func:`image_grid`, :func:`reconstruction_grid`,
  :func:`traversal_grid`, :func:`write_traversal_gif`), used by the trainer to
  log images to W&B (which logs float images as black) and by the figures;
* matplotlib figures (``*_figure``), returned and never shown, so they work
  headless, in notebooks, and in :func:`bcvae.plots.write_run_plots` (``bcvae plots RUN``).

The numbers they draw (KL per latent, switch-on order, latent-factor scores) come from
:mod:`bcvae.latents`; loading a run from disk is :mod:`bcvae.plots`.

Figures are built on :class:`matplotlib.figure.Figure` directly, not through
``pyplot``: nothing is registered globally, so writing many plots leaks nothing
and a notebook shows a figure exactly once (when it is the cell's value).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from bcvae.data import FACTOR_NAMES, FACTOR_SIZES, latents_values
from bcvae.data.render import SHAPE_NAMES
from bcvae.latents import (
    SWITCH_ON_NATS,
    factor_scores,
    last_kl_per_latent,
    latent_kl,
    n_latents,
    order_by_kl,
    series,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# ================================================================ uint8 arrays

def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile ``(N, H, W)`` images in [0, 1] (or 0/1 uint8) into one uint8 ``(H', W')`` image.

    Rows are filled left to right; a ``pad``-pixel grey border separates tiles,
    so ``H' = rows·(H + pad) + pad`` and ``W' = ncols·(W + pad) + pad``.
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = img
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def display_sample(factors: np.ndarray, n: int = 8, seed: int = 0) -> np.ndarray:
    """Positions of ``n`` images that show the dataset: every shape, a spread of scales,
    orientations and positions — not the first rows of a fold, which is stored sorted by
    factors (all small squares at orientation 0 in the top-left corner).

    ``factors``: ``(N, 6)`` latents_classes (color, shape, scale, orientation, posX, posY).
    Image ``i`` has shape ``i mod 3`` and the scale, orientation and position closest to
    evenly spread targets (the first: medium scale, centred, as a traversal's base image),
    ties broken by a generator seeded with ``seed``. Returns ``(n,)`` int64 positions,
    distinct while the data allow.
    """
    factors = np.asarray(factors)
    rng = np.random.default_rng(seed)
    sizes = np.array(FACTOR_SIZES)
    taken = np.zeros(len(factors), bool)
    picks = []
    for i in range(n):
        spread = (i * 0.618034 + 0.5) % 1.0 if i else 0.5      # golden-ratio spread; the first is central
        target = np.array([0, i % 3, spread * (sizes[2] - 1), (i * 0.381966 % 1.0) * (sizes[3] - 1),
                           ((spread + 0.37 * (i % 2)) % 1.0) * (sizes[4] - 1), (1 - spread) * (sizes[5] - 1)])
        if i == 0:
            target[3] = 0
        cost = np.abs((factors[:, 2:] - target[2:]) / (sizes[2:] - 1)).sum(axis=1)
        cost = cost + 10.0 * (factors[:, 1] != target[1]) + 100.0 * taken + 1e-6 * rng.random(len(factors))
        best = int(np.argmin(cost))
        taken[best] = True
        picks.append(best)
    return np.array(picks, dtype=np.int64)


@torch.no_grad()
def reconstructions(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Decoder means for the posterior means of ``x``.

    ``x`` is ``(B, 1, 64, 64)`` float; returns ``(B, 64, 64)`` float32 in [0, 1].
    Uses μ (no sampling), so drawing pictures never consumes random numbers.
    """
    mu, _ = model.encode(x)
    return torch.sigmoid(model.decode(mu)).float().squeeze(1).cpu().numpy()


def reconstruction_grid(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Originals in the top row, their reconstructions below: uint8 ``(2·66+2, B·66+2)``."""
    recon = reconstructions(model, x)
    originals = x.float().squeeze(1).cpu().numpy()
    return image_grid(np.concatenate([originals, recon]), ncols=len(originals))


@torch.no_grad()
def traversal_frames(model: torch.nn.Module, x: torch.Tensor, dims: Sequence[int],
                     values: np.ndarray) -> np.ndarray:
    """Decode μ(x) with one latent at a time set to each of ``values``.

    ``x`` is one image ``(1, 1, 64, 64)``; returns ``(len(dims), len(values), 64, 64)``
    float32 in [0, 1]: row i varies latent ``dims[i]``, every other latent stays at
    the image's code. Values are absolute: the prior is N(0, 1), so −3..3 spans it.
    """
    mu, _ = model.encode(x)
    dims = list(dims)
    z = mu.repeat(len(dims) * len(values), 1)
    for i, d in enumerate(dims):
        z[i * len(values):(i + 1) * len(values), d] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
    frames = torch.sigmoid(model.decode(z)).float().squeeze(1).cpu().numpy()
    return frames.reshape(len(dims), len(values), *frames.shape[-2:])


def traversal_grid(frames: np.ndarray) -> np.ndarray:
    """``(R, C, H, W)`` traversal frames -> one uint8 grid, one latent per row."""
    rows, cols = frames.shape[:2]
    return image_grid(frames.reshape(rows * cols, *frames.shape[2:]), ncols=cols)


def write_traversal_gif(frames: np.ndarray, path: Path, duration_ms: int = 120) -> Path:
    """Animated GIF of ``(R, C, H, W)`` traversals: frame j shows column j of every row
    side by side, sweeping forward then back."""
    from PIL import Image

    rows, cols = frames.shape[:2]
    strips = [image_grid(frames[:, j], ncols=rows) for j in range(cols)]
    strips = strips + strips[-2:0:-1]  # ping-pong
    pil = [Image.fromarray(s) for s in strips]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=duration_ms, loop=0)
    return path


# ================================================================ figures

def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _latent_label(d: int, kl: np.ndarray | None) -> str:
    return f"z{d}" if kl is None else f"z{d}\n{kl[d]:.2f} nats"


def step_tick(step: float, _pos=None) -> str:
    """Tick label of a training-step axis: ``"155k"`` rather than ``"155000"``, so the
    labels of a 100k-step run do not run into each other."""
    return f"{step / 1000:g}k" if abs(step) >= 1000 else f"{step:g}"


def _step_axis(ax) -> None:
    """Label ``ax``'s x axis as training steps, ticks in thousands (:func:`step_tick`)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("training step")
    ax.xaxis.set_major_formatter(FuncFormatter(step_tick))


def traversal_figure(model: torch.nn.Module, x: torch.Tensor, kl: np.ndarray | None = None,
                     values: np.ndarray | None = None, dims: Sequence[int] | None = None) -> Figure:
    """Latent traversals of one image: rows = latents by KL, columns = latent values.

    ``x`` is ``(1, 1, 64, 64)``; ``kl`` (D,) nats orders and labels the rows
    (computed on ``x`` when None, a rough estimate from one image); ``values``
    default to 9 points in −3..3. The single axes holds one image of
    ``len(dims) × len(values)`` tiles of 64×64 (2-pixel borders); each row is
    labelled with its latent and KL.
    """
    values = np.linspace(-3, 3, 9) if values is None else np.asarray(values, np.float64)
    kl = latent_kl(model, x) if kl is None else np.asarray(kl, np.float64)
    dims = order_by_kl(kl) if dims is None else list(dims)
    grid = traversal_grid(traversal_frames(model, x, dims, values))
    fig = _figure(1.0 + 0.75 * len(values), 0.4 + 0.75 * len(dims))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    centre = lambda k: 2 + 66 * k + 32  # tile centres: 2-pixel pad + 64-pixel tiles
    ax.set_yticks([centre(r) for r in range(len(dims))], [_latent_label(d, kl) for d in dims], fontsize=8)
    ax.set_xticks([centre(c) for c in range(len(values))], [f"{v:+.1f}" for v in values], fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("latent value (others fixed at the image's code)")
    ax.set_title("latent traversals, rows by KL")
    return fig


def reconstruction_figure(model: torch.nn.Module, x: torch.Tensor) -> Figure:
    """Originals above their reconstructions: one axes, image ``(2·66+2, B·66+2)``.

    ``x`` is ``(B, 1, 64, 64)``; reconstructions decode the posterior mean.
    """
    grid = reconstruction_grid(model, x)
    fig = _figure(1.2 + 0.75 * len(x), 2.0)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([34, 100], ["original", "recon."], fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_title("reconstructions (decoder mean of the posterior mean)")
    return fig


def kl_emergence_figure(rows: Sequence[dict], split: str = "train",
                        threshold_nats: float = SWITCH_ON_NATS) -> Figure:
    """KL of each latent over training steps, the total KL and (capacity objective) C(step).

    One axes. ``rows`` are logged scalars (:func:`bcvae.track.load_history`); per-latent
    KL from ``<split>/kl_dim/<i>``, total from ``<split>/kl``, capacity from
    ``train/C`` when logged. Legend entries are ordered by final KL.
    """
    from matplotlib import colormaps

    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    d = n_latents(rows, split)
    final = last_kl_per_latent(rows, split)
    colours = colormaps["tab10" if d <= 10 else "tab20"]
    for i in order_by_kl(final) if d else []:
        ax.plot(*series(rows, f"{split}/kl_dim/{i}"), color=colours(i % colours.N), lw=1.4,
                label=f"z{i} ({final[i]:.1f})")
    steps, total = series(rows, f"{split}/kl")
    if len(steps):
        ax.plot(steps, total, color="black", lw=2, label="total KL")
    steps, cap = series(rows, "train/C")
    if len(steps):
        ax.plot(steps, cap, color="black", ls="--", lw=1.5, label="capacity C")
    ax.axhline(threshold_nats, color="grey", ls=":", lw=1, label=f"switch-on ({threshold_nats:.2f})")
    _step_axis(ax)
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent ({split}): latents switching on")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def loss_curves_figure(rows: Sequence[dict]) -> Figure:
    """Training and validation loss, reconstruction NLL and KL over steps: three axes.

    A quantity whose values are all positive is drawn on a log scale (the
    capacity objective's loss spans orders of magnitude).
    """
    fig = _figure(11.0, 3.4)
    axes = fig.subplots(1, 3)
    for ax, term, label in zip(axes, ("loss", "rec", "kl"), ("loss", "reconstruction NLL", "KL")):
        for split, style in (("train", {"lw": 1.2}), ("val", {"marker": "o", "lw": 1.2})):
            steps, values = series(rows, f"{split}/{term}")
            if len(steps):
                ax.plot(steps, values, label=split, **style)
        drawn = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.zeros(0)])
        if len(drawn) and np.all(drawn > 0):
            ax.set_yscale("log")
        _step_axis(ax)
        ax.set_title(f"{label} (nats)")
        if ax.get_lines():
            ax.legend(fontsize=8)
    return fig


def draw_information(ax, rows: Sequence[dict], split: str = "train", c_label: str = "capacity C") -> None:
    """Lines of ``<split>/kl``, ``<split>/mi``, ``<split>/marginal_kl`` and ``train/C`` on ``ax``
    (those that were logged), labelled for a legend."""
    for key, label, style in ((f"{split}/kl", "KL", {"color": "black", "lw": 2}),
                              (f"{split}/mi", "I(x; z)", {"color": "tab:blue", "lw": 1.4}),
                              (f"{split}/marginal_kl", "KL(q(z) ‖ p(z))", {"color": "tab:orange", "lw": 1.4}),
                              ("train/C", c_label, {"color": "black", "ls": "--", "lw": 1.2})):
        steps, values = series(rows, key)
        if len(steps):
            ax.plot(steps, values, label=label, **style)


def information_figure(rows: Sequence[dict], split: str = "train") -> Figure:
    """Where the KL goes: KL = I(x; z) + KL(q(z) ‖ p(z)) over steps, with C(step) when logged.

    Two axes. Left: the KL, its index-code mutual information (the nats that tell images
    apart) and the marginal KL (nats spent moving q(z) as a whole, e.g. a common shift of
    μ), from ``<split>/kl``, ``<split>/mi``, ``<split>/marginal_kl``, and ``train/C``.
    Right: reconstruction NLL. "KL = C but MI ≈ 0" is a decoder still drawing the mean image.
    """
    fig = _figure(11.0, 3.6)
    info, rec = fig.subplots(1, 2)
    draw_information(info, rows, split)
    _step_axis(info)
    info.set_ylabel("nats")
    info.set_title(f"KL = I(x; z) + KL(q(z) ‖ p(z))  ({split})")
    if info.get_lines():
        info.legend(fontsize=8)
    steps, values = series(rows, f"{split}/rec")
    if len(steps):
        rec.plot(steps, values, color="tab:green", lw=1.4)
    _step_axis(rec)
    rec.set_title(f"reconstruction NLL ({split}, nats)")
    return fig


def seeds_figure(histories: dict[str, dict[str, Sequence[dict]]],
                 keys: Sequence[tuple[str, str]] = (("train/rec", "reconstruction NLL (nats)"),
                                                    ("train/kl", "KL (nats)"))) -> Figure:
    """Curves of several runs side by side: one row per experiment, one column per
    quantity, one line per run (seed).

    ``histories`` maps experiment -> {run label: logged rows (:func:`bcvae.track.load_history`)}.
    Seeds of one objective can differ most in *when* they learn: a run that sits on
    the reconstruction plateau of an uninformative code (the mean image) for a
    while shows here as a late drop, which a mean ± std table hides.
    """
    from matplotlib import colormaps

    names = list(histories)
    n_rows = max(len(names), 1)
    fig = _figure(4.2 * len(keys), 2.6 * n_rows)
    axes = fig.subplots(n_rows, len(keys), squeeze=False)
    colours = colormaps["tab10"]
    for row, name in zip(axes, names):
        for ax, (key, label) in zip(row, keys):
            for j, (run, history) in enumerate(histories[name].items()):
                steps, values = series(history, key)
                if len(steps):
                    ax.plot(steps, values, color=colours(j % colours.N), lw=1.2, label=run)
            if key.endswith("/rec") and ax.get_lines():
                ax.set_yscale("log")
            ax.set_title(f"{name}: {label}", fontsize=9)
            _step_axis(ax)
            if ax.get_lines():
                ax.legend(fontsize=7)
    return fig


def latent_factor_figure(codes: dict[str, np.ndarray], kl: np.ndarray | None = None,
                         dims: Sequence[int] | None = None) -> Figure:
    """Mean code of each latent (rows) as each factor varies (columns).

    ``codes`` from :func:`bcvae.latents.factor_codes`; the other factors are averaged out.
    Rows follow ``dims`` (default: by KL when given). One axes per (latent,
    factor), drawing the mean code minus the latent's overall mean, ± the
    spread over the other factors; all share the y axis, so a collapsed latent
    is a flat line. Each
    axes is annotated with η² (:func:`bcvae.latents.factor_scores`); the factor a latent
    varies most with is drawn in colour.
    """
    names = list(codes)
    d = next(iter(codes.values())).shape[2]
    dims = (order_by_kl(kl) if kl is not None else list(range(d))) if dims is None else list(dims)
    scores = factor_scores(codes)
    fig = _figure(2.0 * len(names) + 0.8, 0.9 * len(dims) + 0.8)
    axes = fig.subplots(len(dims), len(names), sharey=True, squeeze=False)
    for r, j in enumerate(dims):
        best = max(names, key=lambda n: scores[n][j])
        for c, name in enumerate(names):
            _factor_panel(axes[r, c], codes[name][:, :, j], name, scores[name][j], name == best)
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
        axes[r, 0].set_ylabel(_latent_label(j, kl), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("centred mean code per factor value (other factors averaged, band ± 1 std); "
                 "η² = fraction of the latent's variance explained", fontsize=9)
    return fig


def _factor_panel(ax, codes: np.ndarray, name: str, eta2: float, best: bool) -> None:
    """One cell of the latent-vs-factor grid: mean ± std of a latent over one factor's values."""
    f = FACTOR_NAMES.index(name)
    classes = np.zeros((FACTOR_SIZES[f], len(FACTOR_SIZES)), np.int64)
    classes[:, f] = np.arange(FACTOR_SIZES[f])
    x = latents_values(classes)[:, f]
    # Centred on the latent's overall mean: offsets differ between latents and
    # would otherwise hide the variation on the shared y axis.
    mean, std = codes.mean(axis=1) - codes.mean(), codes.std(axis=1)
    colour = "tab:red" if best else "tab:grey"
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    ax.plot(x, mean, color=colour, lw=1.5 if best else 1, marker="." if len(x) <= 6 else None)
    ax.text(0.03, 0.92, f"η²={eta2:.2f}", transform=ax.transAxes, fontsize=7, va="top",
            fontweight="bold" if best else "normal")
    if name == "shape":
        ax.set_xticks(x, SHAPE_NAMES)
    ax.tick_params(labelsize=6)
