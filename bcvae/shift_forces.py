"""What pushes a FactorVAE code off the prior: the forces on a shift common to every code.

Shift every posterior mean by the same δ (z = μ + δ + σε) and differentiate each term of
the VAE's loss with respect to δ at δ = 0. The KL pulls the code back to the prior with
exactly the batch mean of μ. The total correlation, with an exact density ratio, pulls
with nothing: TC does not change when every code moves together, and indeed
E_q[∇_z log q(z)/∏_j q(z_j)] = 0 (each term integrates a density's gradient). So any
force γ·TC exerts on a common shift comes from the discriminator's error, and where it
outweighs the KL's pull the code's location is the discriminator's to set::

    python -m bcvae shift-forces runs/factorvae-seed1/fold0 --images 4096

Needs a FactorVAE run's checkpoint (it holds the discriminator; ``pretrained/`` does not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bcvae.checkpoint import checkpoint_path, load_model
from bcvae.data import render_dsprites
from bcvae.errors import ArgumentParser, CheckpointError
from bcvae.latents import random_classes
from bcvae.losses import discriminator_tc, kl_per_dim, recon_nll
from bcvae.model import VAE, discriminator_for

TERMS = ("rec", "kl", "tc")


def shift_forces(model: VAE, disc: nn.Module, gamma: float, x: Tensor, eps: Tensor,
                 likelihood: str = "bernoulli", centre: bool = False) -> dict[str, Tensor]:
    """Gradient of each loss term with respect to a shift δ of every μ, at δ = 0.

    x : (B, 1, 64, 64) images; eps : (B, D) standard normal draws (z = μ + δ + σ·eps).
    Returns ``{"rec", "kl", "tc"}`` -> (D,): the reconstruction NLL's, the KL's (= mean μ)
    and γ·TC's, TC read from the discriminator by the training loss's own estimate
    (:func:`~bcvae.losses.discriminator_tc`; with ``centre``, ``loss.disc_centre``, exactly zero).
    """
    with torch.no_grad():
        mu, logvar = model.encode(x)
    forces = {}
    for term in TERMS:
        delta = torch.zeros(mu.shape[1], dtype=mu.dtype, requires_grad=True)
        mu_shifted = mu + delta
        z = mu_shifted + torch.exp(0.5 * logvar) * eps
        if term == "rec":
            value = recon_nll(model.decode(z), x, likelihood)
        elif term == "kl":
            value = kl_per_dim(mu_shifted, logvar).sum()
        else:
            value = gamma * discriminator_tc(disc, z, centre)
        (forces[term],) = torch.autograd.grad(value, delta)
    return forces


def load_factor_run(run: Path) -> tuple[VAE, nn.Module, float, str, bool, int]:
    """The VAE, the discriminator, γ, the likelihood, ``loss.disc_centre`` and the step of a FactorVAE run."""
    path = checkpoint_path(run)
    model, cfg, ckpt = load_model(path, torch.device("cpu"))
    if cfg.loss.objective != "factor":
        raise CheckpointError(f"{run} trains objective {cfg.loss.objective!r}; the forces need "
                              "FactorVAE's discriminator (objective: factor)")
    if ckpt.get("disc") is None:  # a pretrained directory records it as None
        raise CheckpointError(f"{path} holds no discriminator (a pretrained/ directory keeps the VAE "
                              "only); give the run directory")
    disc = discriminator_for(cfg.loss.objective, cfg.model.z_dim)
    disc.load_state_dict(ckpt["disc"])
    return model, disc.eval(), cfg.loss.factor_gamma, cfg.loss.likelihood, cfg.loss.disc_centre, ckpt["step"]


def report(name: str, step: int, forces: dict[str, np.ndarray]) -> str:
    """Per-latent forces and their norms over the latents, as text (the KL's force is the mean μ)."""
    total = sum(forces.values())
    lines = [f"{name} (step {step:,})"]
    lines += [f"  ∂{term:<3}/∂δ     " + " ".join(f"{v:7.2f}" for v in forces[term]) for term in TERMS]
    norms = ", ".join(f"|{t}| {np.linalg.norm(forces[t]):.2f}" for t in TERMS)
    lines.append(f"  norms: {norms}, |sum| {np.linalg.norm(total):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae shift-forces", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="FactorVAE run directories (runs/<exp>/fold<k>)")
    p.add_argument("--images", type=int, default=4096, help="images rendered from uniform factors")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.images < 2:
        p.error(f"--images must be >= 2, got {args.images}")
    torch.manual_seed(args.seed)
    x = torch.from_numpy(render_dsprites(random_classes(args.images, np.random.default_rng(args.seed))))
    x = x.unsqueeze(1).float()
    for run in args.runs:
        model, disc, gamma, likelihood, centre, step = load_factor_run(Path(run))
        sums = {t: np.zeros(model.z_dim) for t in TERMS}
        for xb in x.split(1024):  # each term is a batch mean: weigh batches by their size
            eps = torch.randn(len(xb), model.z_dim)
            for t, f in shift_forces(model, disc, gamma, xb, eps, likelihood, centre).items():
                sums[t] += f.numpy() * len(xb) / len(x)
        print(report(run, step, sums))
    return 0
