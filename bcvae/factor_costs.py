"""What knowing each factor is worth to the reconstruction, per nat of code.

A decoder that knows exactly the factors in a set S, and nothing else, can do no better than
draw the mean of the images that share them, p̄_S = E[x | S]. Its expected Bernoulli NLL is
then the pixels' summed binary entropy, Σ_i H_b(p̄_S,i), averaged over the groups: the floor
of the reconstruction term for any model whose code tells the decoder S and no more. Telling
it a uniform factor f costs at least its entropy, ln V_f nats of KL. So

    ΔNLL(f | S) = NLL(S) − NLL(S ∪ {f})      nats of reconstruction that knowing f saves,
    ΔNLL(f | S) / ln V_f                     nats saved per nat of code,

rank the factors as a rate-limited model should take them up: the capacity objective fixes
the nats and ought to spend each where it saves the most. A Gaussian code pays more than
ln V_f for a factor (its posterior must be narrow beside the spacing of the values), so these
are bounds for an ideal discrete code, not predictions of a VAE's numbers.

Everything is exact, no sampling: every image of the grid is rendered once, and each subset's
group sums are accumulated over it (a few minutes on two cores, about 2 GB)::

    python -m bcvae factor-costs --out results/factor_costs.json
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bcvae.data import render_dsprites
from bcvae.data.render import FACTOR_NAMES, FACTOR_SIZES, SHAPE_NAMES
from bcvae.errors import ArgumentParser

Render = Callable[[np.ndarray], np.ndarray]
"""latent classes ``(n, F)`` -> binary images ``(n, H, W)`` uint8."""
_HIST_BLOCK = 1 << 24
"""Counts histogrammed at a time: bounds the int64 temporary of ``np.bincount`` to 128 MB."""


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H_b(p) = −p ln p − (1 − p) ln(1 − p) in nats, elementwise, with 0 ln 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1.0 - p) * np.log1p(-p))
    return np.where((p <= 0.0) | (p >= 1.0), 0.0, h)


def _count_dtype(count: int) -> type:
    """The smallest unsigned type that holds a group's pixel count (at most ``count``)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if count <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _group_nll(sums: np.ndarray, count: int) -> float:
    """Mean over groups of Σ_pixels H_b(sum / count); ``sums`` is (..., pixels) of counts in [0, count].

    H_b takes count + 1 values only, so a histogram of the counts replaces the float array.
    """
    table = binary_entropy(np.arange(count + 1) / count)
    flat = sums.reshape(-1)
    hist = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, flat.size, _HIST_BLOCK):
        hist += np.bincount(flat[start:start + _HIST_BLOCK], minlength=count + 1)
    groups = flat.size // sums.shape[-1]
    return float(hist @ table) / groups


def subset_nll(render: Render = render_dsprites, sizes: Sequence[int] = FACTOR_SIZES, *,
               inner: int = 3, by: int | None = FACTOR_NAMES.index("shape")) -> dict[frozenset, dict]:
    """The best expected reconstruction NLL (nats per image) given each subset of the factors.

    sizes : the grid of factor classes that ``render`` takes (one column each); factors of
    size 1 are constant and left out of the subsets. The grid is walked one combination of
    the leading factors at a time, rendering the last ``inner`` factors' whole grid at once.
    Returns ``{frozenset(known factor indices): {"nll", "by"}}`` for every subset, where
    ``"by"`` lists the NLL over the images of each value of factor ``by`` (when ``by`` is
    known). Knowing every factor gives 0, each picture being one image.
    """
    sizes = tuple(int(s) for s in sizes)
    if not 0 < inner <= len(sizes):
        raise ValueError(f"inner must be 1..{len(sizes)}, got {inner}")
    varying = [f for f, s in enumerate(sizes) if s > 1]
    outer = list(range(len(sizes) - inner))
    n_images = math.prod(sizes)
    subsets = [frozenset(c) for k in range(len(varying) + 1) for c in itertools.combinations(varying, k)]
    partial = [s for s in subsets if len(s) < len(varying)]
    groups = {s: math.prod(sizes[f] for f in s) for s in subsets}
    sums: dict[frozenset, np.ndarray] = {}   # group pixel counts, made once the pixel count is known
    inner_grid = np.stack(np.meshgrid(*[np.arange(sizes[f]) for f in range(len(outer), len(sizes))],
                                      indexing="ij"), axis=-1).reshape(-1, inner)
    for combo in itertools.product(*[range(sizes[f]) for f in outer]):
        classes = np.concatenate([np.tile(np.array(combo, dtype=np.int64), (len(inner_grid), 1)),
                                  inner_grid], axis=1)
        images = render(classes)
        pixels = images[0].size
        images = images.reshape(*sizes[len(outer):], pixels)
        for s in partial:
            if s not in sums:
                sums[s] = np.zeros([sizes[f] if f in s else 1 for f in range(len(sizes))] + [pixels],
                                   dtype=_count_dtype(n_images // groups[s]))
            axes = tuple(a for a, f in enumerate(range(len(outer), len(sizes))) if f not in s)
            part = images.sum(axis=axes, keepdims=True, dtype=sums[s].dtype) if axes else images
            sums[s][tuple(c if f in s else 0 for f, c in zip(outer, combo))] += part
    table = {}
    for s in subsets:
        if s not in sums:       # every factor known: each group is one binary image
            table[s] = {"nll": 0.0, "by": [0.0] * sizes[by] if by in s else None}
            continue
        count = n_images // groups[s]
        per = None
        if by is not None and by in s:
            per = [_group_nll(np.take(sums[s], [v], axis=by), count) for v in range(sizes[by])]
        table[s] = {"nll": _group_nll(sums[s], count), "by": per}
        del sums[s]
    return table


def code_nats(known: frozenset, sizes: Sequence[int] = FACTOR_SIZES) -> float:
    """ln of the number of class combinations in ``known``: the nats a code needs to tell them."""
    return float(sum(math.log(sizes[f]) for f in known))


def value(table: dict, factor: int, given: frozenset) -> float:
    """ΔNLL(factor | given): the nats of reconstruction that knowing ``factor`` saves beside ``given``."""
    return table[given]["nll"] - table[given | {factor}]["nll"]


def greedy_order(table: dict, sizes: Sequence[int] = FACTOR_SIZES) -> list[dict]:
    """Factors taken up one at a time, each the one that saves the most NLL per nat of code."""
    known, path = frozenset(), []
    varying = sorted(set().union(*table))
    while len(known) < len(varying):
        rates = {f: value(table, f, known) / math.log(sizes[f]) for f in varying if f not in known}
        best = max(rates, key=rates.get)
        known = known | {best}
        path.append({"factor": best, "saved_per_nat": rates[best], "code_nats": code_nats(known, sizes),
                     "nll": table[known]["nll"]})
    return path


def lower_hull(table: dict, sizes: Sequence[int] = FACTOR_SIZES) -> list[frozenset]:
    """Subsets on the lower convex hull of (code nats, NLL), from none known to all: the codes
    that no mixture of other subsets beats at their rate (the discrete rate-distortion frontier)."""
    points = sorted(((code_nats(s, sizes), table[s]["nll"], s) for s in table), key=lambda p: (p[0], p[1]))
    hull: list[tuple] = []
    for p in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        if hull and hull[-1][0] == p[0]:
            continue            # same rate, higher NLL: never on the lower hull
        hull.append(p)
    return [p[2] for p in hull]


def _cross(a: tuple, b: tuple, c: tuple) -> float:
    """z of (b − a) × (c − a): > 0 when a → b → c turns left (convex from below)."""
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _names(s: frozenset) -> str:
    return "{" + ", ".join(FACTOR_NAMES[f] for f in sorted(s)) + "}"


def report(table: dict) -> str:
    """The tables the command prints, in markdown."""
    varying = sorted(set().union(*table))
    every = frozenset(varying)
    lines = [f"best reconstruction NLL knowing nothing: {table[frozenset()]['nll']:.1f} nats; "
             f"the whole grid takes {code_nats(every):.2f} nats of code.", "",
             "| factor | ln V (nats) | saved, alone | per nat | saved, last | per nat |", "|---|---:|---:|---:|---:|---:|"]
    for f in varying:
        alone, last = value(table, f, frozenset()), value(table, f, every - {f})
        lines.append(f"| {FACTOR_NAMES[f]} | {math.log(FACTOR_SIZES[f]):.2f} | {alone:.1f} | "
                     f"{alone / math.log(FACTOR_SIZES[f]):.1f} | {last:.1f} | {last / math.log(FACTOR_SIZES[f]):.1f} |")
    lines += ["", "each shape's turn, known last (every other factor known): nats saved per image, and per nat of ln 40",
              "", "| shape | saved | per nat |", "|---|---:|---:|"]
    orient = FACTOR_NAMES.index("orientation")
    before, after = table[every - {orient}]["by"], table[every]["by"]
    for s, name in enumerate(SHAPE_NAMES):
        saved = before[s] - after[s]
        lines.append(f"| {name} | {saved:.1f} | {saved / math.log(FACTOR_SIZES[orient]):.1f} |")
    lines += ["", "greedy order, most NLL saved per nat first:", "",
              "| step | factor | saved per nat | code (nats) | NLL |", "|---:|---|---:|---:|---:|"]
    for i, step in enumerate(greedy_order(table), 1):
        lines.append(f"| {i} | {FACTOR_NAMES[step['factor']]} | {step['saved_per_nat']:.1f} | "
                     f"{step['code_nats']:.2f} | {step['nll']:.1f} |")
    lines += ["", "lower convex hull of (code nats, NLL), the discrete rate-distortion frontier:", "",
              "| known | code (nats) | NLL |", "|---|---:|---:|"]
    for s in lower_hull(table):
        lines.append(f"| {_names(s)} | {code_nats(s):.2f} | {table[s]['nll']:.1f} |")
    return "\n".join(lines)


def to_json(table: dict) -> dict:
    """Every subset's NLL (and by shape where shape is known), keyed by its factor names."""
    return {"nll_unit": "nats per image, Bernoulli, best decoder given the known factors",
            "subsets": [{"known": [FACTOR_NAMES[f] for f in sorted(s)], "code_nats": code_nats(s),
                         "nll": row["nll"],
                         **({"nll_by_shape": dict(zip(SHAPE_NAMES, row["by"]))} if row["by"] is not None else {})}
                        for s, row in sorted(table.items(), key=lambda kv: (len(kv[0]), sorted(kv[0])))]}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae factor-costs", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write every subset's NLL to this JSON file")
    args = p.parse_args(argv)
    table = subset_nll()
    print(report(table))
    if args.out:
        Path(args.out).write_text(json.dumps(to_json(table), indent=1) + "\n")
    return 0
