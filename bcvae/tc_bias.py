"""How the β-TCVAE minibatch estimates depend on the batch they are computed on.

The objective estimates log q(z) and log q(z_d) from the B codes of one batch
(:func:`bcvae.losses.tc_decomposition`). Codes of images that are neighbours in
the dataset (a sprite one pixel away) overlap, and a batch of 64 out of 663,552
images almost never holds a code's neighbours: the joint density is
underestimated more than the one-dimensional marginals, and the total
correlation reads low, below zero on a trained model. This module encodes one
set of images once and averages the three estimates over disjoint batches of
several sizes, so the bias can be read off against the batch size::

    python -m bcvae tc-bias pretrained/btcvae --images 16384 --batch-sizes 64,256,1024,4096
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import N_IMAGES, render_dsprites
from bcvae.errors import ArgumentParser
from bcvae.latents import random_classes
from bcvae.losses import tc_decomposition


@torch.no_grad()
def estimates_by_batch_size(mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                            batch_sizes: Sequence[int], seed: int = 0) -> list[dict]:
    """MI, TC and dimension-wise KL (minibatch stratified sampling) averaged over disjoint
    batches of each size, from one posterior sample per code.

    mu, logvar : ``(n, D)`` posteriors; ``dataset_size`` : the N the objective uses.
    Returns one dict per batch size: ``batch``, ``batches``, ``mi``, ``tc``, ``dw_kl``, ``kl``
    (their sum, the Monte-Carlo KL, the same for every batch size).
    """
    g = torch.Generator().manual_seed(seed)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=mu.dtype)
    rows = []
    for batch in batch_sizes:
        if not 2 <= batch <= len(mu):
            raise ValueError(f"batch size {batch} must lie in [2, {len(mu)}] (the number of codes)")
        order = torch.randperm(len(mu), generator=g)
        parts = [order[i:i + batch] for i in range(0, len(mu) - batch + 1, batch)]  # full batches only
        terms = np.array([[t.item() for t in tc_decomposition(z[i], mu[i], logvar[i], dataset_size)]
                          for i in parts])
        mi, tc, dw_kl = terms.mean(axis=0)
        rows.append({"batch": batch, "batches": len(parts), "mi": mi, "tc": tc, "dw_kl": dw_kl,
                     "kl": mi + tc + dw_kl})
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows of :func:`estimates_by_batch_size` as a markdown table (nats)."""
    lines = ["| batch | batches | MI | TC | dim-wise KL | KL |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['batches']} | {r['mi']:.2f} | {r['tc']:.2f} | {r['dw_kl']:.2f} | {r['kl']:.2f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae tc-bias", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (runs/<exp>/fold<k>) or pretrained/<experiment>")
    p.add_argument("--images", type=int, default=16_384, help="images rendered from uniform factors")
    p.add_argument("--batch-sizes", default="64,256,1024,4096")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers")
    if max(batch_sizes) > args.images or min(batch_sizes) < 2:
        p.error(f"--batch-sizes {args.batch_sizes!r}: each must lie in [2, --images = {args.images}]")
    model, cfg, _ = load_model(checkpoint_path(Path(args.run)), torch.device("cpu"))
    images = render_dsprites(random_classes(args.images, np.random.default_rng(args.seed)))
    x = torch.from_numpy(images).unsqueeze(1).float()
    with torch.inference_mode():
        mu, logvar = zip(*(model.encode(b) for b in x.split(1024)))
    # the objective's N: the k - 1 training folds (to within a rounding for a data.subset)
    dataset_size = (cfg.data.subset or N_IMAGES) * (cfg.data.k - 1) // cfg.data.k
    rows = estimates_by_batch_size(torch.cat(mu).double(), torch.cat(logvar).double(), dataset_size,
                                   batch_sizes, args.seed)
    print(f"{args.run}: {args.images:,} rendered images, N = {dataset_size:,}, one posterior sample each")
    print(markdown(rows))
    return 0

