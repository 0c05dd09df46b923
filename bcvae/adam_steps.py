"""How large a step Adam gives each loss term, read from a run's checkpoint.

Adam moves parameter i by lr·m_i / (√v̂_i + ε), where v̂ is the bias-corrected running mean
of the squared gradient of the *whole* loss. A term whose gradient g_i is small next to the
gradients that filled v̂ therefore gets a small step: its share of a full Adam step is about
|g_i| / (√v̂_i + ε), summarised over a network as ‖g‖ / ‖√v̂ + ε‖. On the capacity objective's plateau (docs/capacity_plateau.md, "Why it
stalls", point 3) the γ-term's gradients fill v̂ of the encoder, and the reconstruction's
share there is what this measures. The decoder, which the regulariser does not reach, is the
comparison within the same checkpoint::

    python -m bcvae adam-steps runs/plateau-clip100-seed0/fold0 --images 1024

Objectives ``capacity`` and ``beta`` (the others' regularisers need a discriminator or the
dataset size). Needs a run's ``checkpoint.pt``: ``pretrained/`` keeps no optimiser state. A run
trained with SGD (``train.optimizer=sgd``) has no second moment: its step is lr times the
(momentum-averaged) gradient, so only the terms' norms are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bcvae.checkpoint import checkpoint_path, load_model, write_json
from bcvae.data import render_dsprites
from bcvae.errors import ArgumentParser, CheckpointError
from bcvae.latents import random_classes
from bcvae.losses import recon_nll, vae_loss, warm_end_for
from bcvae.model import VAE

PARTS = ("encoder", "decoder")
TERMS = ("rec", "reg")
OBJECTIVES = ("capacity", "beta")


def term_gradients(model: VAE, loss_cfg, x: Tensor, eps: Tensor, step: int,
                   warm_end: float | None = None) -> dict[str, list[Tensor]]:
    """Gradient of the reconstruction NLL (``"rec"``) and of the rest of the loss (``"reg"``:
    the objective's regulariser, e.g. γ·|KL − C|) for every parameter, in ``model.parameters()`` order.

    x : (B, 1, 64, 64) images; eps : (B, D) standard normal draws. rec + reg is the
    gradient of :func:`~bcvae.losses.vae_loss` at ``step``.
    """
    params = list(model.parameters())
    logits, mu, logvar, z = model(x, eps)
    loss, _ = vae_loss(loss_cfg, x, logits, mu, logvar, z, step, warm_end=warm_end)
    rec = recon_nll(logits, x, loss_cfg.likelihood)
    g_rec = torch.autograd.grad(rec, params, retain_graph=True)
    g_reg = torch.autograd.grad(loss - rec, params, allow_unused=True)
    g_reg = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_reg)]
    return {"rec": list(g_rec), "reg": g_reg}


def adam_denominators(opt_state: dict) -> list[Tensor]:
    """√v̂ + ε of every parameter, from a torch Adam ``state_dict()`` with one parameter group,
    in the group's parameter order. v̂ = exp_avg_sq / (1 − β₂^t)."""
    (group,) = opt_state["param_groups"]
    beta2, eps = group["betas"][1], group["eps"]
    out = []
    for index in group["params"]:
        state = opt_state["state"][index]
        t = float(state["step"])
        out.append((state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt() + eps)
    return out


def _norm(tensors) -> float:
    """The L2 norm of all the elements of ``tensors`` together, summed in float64."""
    return sum(float((t.double() ** 2).sum()) for t in tensors) ** 0.5


def share(grads: list[Tensor], denominators: list[Tensor], seen: list[Tensor]) -> float:
    """‖g‖ / ‖√v̂ + ε‖ over the elements Adam has seen a gradient for (``seen``: v̂ > 0).

    The term's gradient in units of the gradients Adam divides by: 1 = a full step,
    0.01 = a hundredth of one. A norm ratio, not a median of element ratios, because many
    elements (units off for these images) have no gradient at all, and the few elements with
    a tiny v̂ would dominate a mean.
    """
    den = _norm(d[s] for d, s in zip(denominators, seen))
    return _norm(g[s] for g, s in zip(grads, seen)) / den if den else float("nan")


def step_shares(model: VAE, opt_state: dict | None, grads: dict[str, list[Tensor]]) -> dict[str, dict[str, float]]:
    """Per part (encoder, decoder) and term: the gradient's L2 norm and its :func:`share` of a full Adam
    step (None without Adam's state, ``opt_state`` None: an SGD run)."""
    names = [name for name, _ in model.named_parameters()]
    denominators = seen = None
    if opt_state is not None:
        denominators = adam_denominators(opt_state)
        if len(denominators) != len(names):
            raise CheckpointError(f"the optimiser state holds {len(denominators)} parameters, the model {len(names)}")
        eps = opt_state["param_groups"][0]["eps"]
        seen = [d > eps for d in denominators]
    out = {}
    for part in PARTS:
        idx = [i for i, name in enumerate(names) if name.startswith(part + ".")]
        out[part] = {}
        for term in TERMS:
            g = [grads[term][i] for i in idx]
            out[part][f"{term}_norm"] = _norm(g)
            out[part][f"{term}_share"] = None if denominators is None else share(
                g, [denominators[i] for i in idx], [seen[i] for i in idx])
    return out


def clip(grads: dict[str, list[Tensor]], max_norm: float) -> tuple[dict[str, list[Tensor]], float]:
    """The terms scaled as ``train.grad_clip`` scales their sum: by min(1, max_norm / ‖rec + reg‖)
    (``max_norm`` 0 = no clipping). Returns the scaled terms and the factor."""
    if not max_norm:
        return grads, 1.0
    norm = _norm(a + b for a, b in zip(grads["rec"], grads["reg"]))
    factor = min(1.0, max_norm / norm) if norm else 1.0
    return {t: [g * factor for g in grads[t]] for t in TERMS}, factor


def run_shares(run: Path, images: int = 1024, seed: int = 0, batch: int = 256) -> dict:
    """:func:`step_shares` of a run's checkpoint, gradients summed over ``images`` rendered images
    (uniform factors, ``seed``) in batches of ``batch``, each weighted by its share of the images.

    A run trained with ``train.grad_clip`` filled v̂ with clipped gradients, so the terms are
    clipped as their sum over these images would be (the training clipped each batch of its own;
    on the plateau the γ-term, the same for every image, sets both norms)."""
    path = checkpoint_path(run)
    model, cfg, ckpt = load_model(path, torch.device("cpu"))
    if cfg.loss.objective not in OBJECTIVES:
        raise CheckpointError(f"{run} trains objective {cfg.loss.objective!r}; adam-steps reads "
                              f"{' and '.join(OBJECTIVES)} (the others' regularisers need more than the VAE)")
    if not isinstance(ckpt.get("opt"), dict):
        raise CheckpointError(f"{path} holds no optimiser state (a pretrained/ directory keeps the VAE only); "
                              "give the run directory")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(render_dsprites(random_classes(images, rng))).unsqueeze(1).float()
    warm_end = warm_end_for(cfg.loss, ckpt.get("warm_start_end"))
    total = None
    for xb in x.split(batch):
        eps = torch.randn(len(xb), model.z_dim, generator=gen)
        g = term_gradients(model, cfg.loss, xb, eps, ckpt["step"], warm_end)
        weight = len(xb) / len(x)
        g = {t: [v * weight for v in g[t]] for t in TERMS}
        total = g if total is None else {t: [a + b for a, b in zip(total[t], g[t])] for t in TERMS}
    total, factor = clip(total, cfg.train.grad_clip)
    adam_state = ckpt["opt"] if cfg.train.optimizer == "adam" else None
    return {"run": str(run), "step": ckpt["step"], "optimizer": cfg.train.optimizer, "images": images, "seed": seed,
            "clip_factor": factor, **step_shares(model, adam_state, total)}


def _fmt(share_value: float | None) -> str:
    return "–" if share_value is None else f"{share_value:.3g}"  # None: an SGD run has no Adam step


def markdown(rows: list[dict]) -> str:
    head = ("| run | step | part | ‖g_rec‖ | ‖g_reg‖ | rec. share of a step | reg. share of a step |\n"
            "|---|---:|---|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        for part in PARTS:
            p = r[part]
            lines.append(f"| {r['run']} | {r['step']:,} | {part} | {p['rec_norm']:.3g} | {p['reg_norm']:.3g} "
                         f"| {_fmt(p['rec_share'])} | {_fmt(p['reg_share'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae adam-steps", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (runs/<exp>/fold<k>) of capacity or β runs")
    p.add_argument("--images", type=int, default=1024, help="images rendered from uniform factors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.images < 2:
        p.error(f"--images must be >= 2, got {args.images}")
    rows = [run_shares(Path(run), args.images, args.seed) for run in args.runs]
    print(markdown(rows))
    if args.out:
        write_json(Path(args.out), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
