"""Which of the encoder's rectifier units (ReLU or leaky) respond to the images at all.

A ReLU unit whose input is ≤ 0 for every image outputs 0 and passes no gradient
back: no loss term moves the weights that feed it, and it comes back on only if
the layers before it change through other units. If every unit of one layer is
off for every image, the layers after it see the same input whatever the image,
the posterior q(z|x) is the same for every x, and no gradient of any loss reaches
the layers before it: the encoder can never again carry information about x. That
is a posterior collapse no schedule undoes (Adam's moments decay to nothing once
the gradients are zero). This module counts, layer by layer, the units that are on
for at least one image and the units whose output differs between images, and the
largest difference between two images' encoder outputs. Leaky units
(``model.arch: burgess_leaky``, ``original``) are counted the same way, "on" meaning in
their slope-1 range; one of them below zero for every image still passes its slope
(0.01) of the gradient, so a leaky layer with no unit on is starved, not cut::

    python -m bcvae encoder-units runs/plateau-gamma1000-seed0/fold0 --images 0   # all 737,280 images
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import N_IMAGES, all_latents_classes, render_dsprites
from bcvae.errors import ArgumentParser
from bcvae.latents import random_classes

CHUNK = 8192
"""Images rendered and encoded at a time."""
SAME = 1e-5
"""Relative difference below which two outputs of a unit count as the same: a unit fed the same
input in batches of another size can differ in its last bits (the order of a matrix product's sums)."""


RECTIFIERS = (nn.ReLU, nn.LeakyReLU)
"""The units watched; a ReLU's "off" passes no gradient, a LeakyReLU's passes its slope of it."""


def _describe(layers: nn.Sequential, index: int) -> str:
    """``Conv2d 1→32`` / ``Linear 512→256``: the nearest weight layer before ``layers[index]``
    (past a BatchNorm, as in the ``original`` network), or ``input``."""
    for layer in reversed(layers[:index]):
        if isinstance(layer, nn.Conv2d):
            return f"Conv2d {layer.in_channels}→{layer.out_channels}"
        if isinstance(layer, nn.Linear):
            return f"Linear {layer.in_features}→{layer.out_features}"
    return "input"


def _slope(unit: nn.Module) -> float:
    """The unit's slope below zero: 0 for a ReLU (no gradient passes), ``negative_slope`` for a leaky one."""
    return float(unit.negative_slope) if isinstance(unit, nn.LeakyReLU) else 0.0


def _kind(unit: nn.Module) -> str:
    """``ReLU`` or ``LeakyReLU(0.01)``: the printed name."""
    return f"LeakyReLU({unit.negative_slope:g})" if isinstance(unit, nn.LeakyReLU) else "ReLU"


@torch.no_grad()
def rectifier_activity(layers: nn.Sequential, batches: Iterable[Tensor]) -> tuple[list[dict], float]:
    """Run ``batches`` through ``layers`` and watch every ``nn.ReLU`` and ``nn.LeakyReLU`` in it.

    ``batches``: input tensors ``(B, ...)``; a unit is a channel of a ``(B, C, H, W)``
    output or a feature of a ``(B, F)`` one. Returns one dict per rectifier, in order:
    ``index`` (its place in ``layers``), ``after`` (the weight layer it follows), ``kind``
    (:func:`_kind`), ``slope`` (:func:`_slope`), ``units``,
    ``on`` (units positive for at least one input at some position: exact) and ``varying``
    (units whose output differs between two inputs at some position, by more than
    :data:`SAME` relative); and the largest absolute difference between two inputs'
    outputs of ``layers``, over every output coordinate (exact: 0.0 when the output is the
    same for every input, a few 1e-9 when only the last bits of a batched product differ).
    """
    watched = {i for i, layer in enumerate(layers) if isinstance(layer, RECTIFIERS)}
    on: dict[int, Tensor] = {}
    varying: dict[int, Tensor] = {}
    first: dict[int, Tensor] = {}            # the first input's activations: what "differs" compares with
    low = high = None                        # per output coordinate, the smallest and largest value seen
    for x in batches:
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            if i in watched:
                units = h.transpose(0, 1).reshape(h.shape[1], len(h), -1)      # (units, B, positions)
                if i not in first:
                    first[i] = units[:, :1].clone()
                    on[i] = torch.zeros(len(units), dtype=torch.bool)
                    varying[i] = torch.zeros(len(units), dtype=torch.bool)
                on[i] |= (units > 0).flatten(1).any(1)
                varying[i] |= ((units - first[i]).abs() > SAME * (1 + first[i].abs())).flatten(1).any(1)
        out = h.flatten(1)
        low = out.amin(0) if low is None else torch.minimum(low, out.amin(0))
        high = out.amax(0) if high is None else torch.maximum(high, out.amax(0))
    if low is None:
        raise ValueError("rectifier_activity needs at least one batch")
    rows = [{"index": i, "after": _describe(layers, i), "kind": _kind(layers[i]),
             "slope": _slope(layers[i]), "units": len(on[i]), "on": int(on[i].sum()),
             "varying": int(varying[i].sum())} for i in sorted(watched)]
    return rows, float((high - low).max())


def image_batches(classes: np.ndarray, chunk: int = CHUNK) -> Iterable[Tensor]:
    """Rendered images of ``classes`` ``(N, 6)``, ``chunk`` at a time, as ``(B, 1, 64, 64)`` float."""
    for start in range(0, len(classes), chunk):
        yield torch.from_numpy(render_dsprites(classes[start:start + chunk])).unsqueeze(1).float()


def dead_layers(rows: list[dict]) -> list[dict]:
    """The layers of :func:`rectifier_activity` with slope 0 (ReLU) and no unit on for any input: they cut
    the encoder."""
    return [r for r in rows if r["on"] == 0 and r["slope"] == 0]


def starved_layers(rows: list[dict]) -> list[dict]:
    """The LeakyReLU layers with no unit on for any input: only the slope's share of a gradient passes."""
    return [r for r in rows if r["on"] == 0 and r["slope"] > 0]


def _none_on(row: dict) -> str:
    return f"no unit after {row['after']} (layer {row['index']}) is on for any of these images"


def markdown(rows: list[dict]) -> str:
    lines = ["| units after | kind | units | on for some image | differ between images |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['after']} (layer {r['index']}) | {r['kind']} | {r['units']} | {r['on']} | {r['varying']} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae encoder-units", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (runs/<exp>/fold<k>) or pretrained/<experiment>")
    p.add_argument("--images", type=int, default=4096,
                   help=f"images rendered from uniform factors; 0 = every one of the {N_IMAGES:,}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.images < 0:
        p.error(f"--images must be >= 0 (0 = all {N_IMAGES:,} images), got {args.images}")
    classes = all_latents_classes() if args.images == 0 else random_classes(args.images, np.random.default_rng(args.seed))
    for run in args.runs:
        model, _, ckpt = load_model(checkpoint_path(Path(run)), torch.device("cpu"))
        rows, spread = rectifier_activity(model.encoder, image_batches(classes))
        print(f"{run} (step {ckpt['step']:,}), {len(classes):,} images:")
        print(markdown(rows))
        print(f"largest difference between two images' encoder outputs (μ, log σ²): {spread:.3g}")
        for r in dead_layers(rows):
            print(f"{_none_on(r)}: the encoder's output does not depend on them, "
                  "and no gradient reaches the layers before it")
        for r in starved_layers(rows):
            print(f"{_none_on(r)}: the layers before it get only the {r['kind']} slope's share of every gradient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
