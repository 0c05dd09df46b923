"""VAE objectives: β-VAE, capacity-annealed β-VAE, FactorVAE and β-TCVAE.

Every function is pure: tensors (and the global step) in, ``(loss, terms)`` out;
no counters live here. Scale convention: reconstruction NLL summed over pixels,
KL summed over latents, both averaged over the batch — so γ = 1000 and C = 25
nats mean what Burgess et al. (2018) mean. ``terms`` holds detached tensors
(no host sync; the trainer calls ``.item()`` when it logs) and python floats.

FactorVAE step order (Kim & Mnih 2018, Alg. 2) the trainer must follow::

    logits, mu, logvar, z = vae(x1)
    loss, terms = vae_loss(cfg, x1, logits, mu, logvar, z, step, discriminator=D)
    vae_opt.zero_grad(); loss.backward(); vae_opt.step()       # 1. VAE update
    with torch.no_grad(): z2 = vae(x2)[3]                       # x2: an independent batch
    d_loss, d_terms = discriminator_loss(D, z, z2)
    d_opt.zero_grad(); d_loss.backward(); d_opt.step()          # 2. discriminator update

``vae_loss`` reads D through detached parameters, so step 1 leaves D's ``.grad``
empty; ``discriminator_loss`` detaches the codes, so step 2 leaves the encoder's
``.grad`` untouched. The detached parameters share storage with D, so D must not
be stepped before ``loss.backward()``: autograd alone does not notice (fused Adam
updates in place without bumping version counters), so ``vae_loss`` stamps D's
parameters at forward time and ``backward()`` raises if any optimiser step or
in-place change touched them since.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

LOG_2PI = math.log(2.0 * math.pi)


def recon_nll(logits: Tensor, x: Tensor, likelihood: str = "bernoulli") -> Tensor:
    """Reconstruction NLL −log p(x|z), summed over pixels, averaged over the batch.

    ``"bernoulli"``: binary cross-entropy on logits. ``"gaussian"``: squared error of
    sigmoid(logits) against x, the NLL of a fixed-variance Gaussian (σ² = ½) up to an
    additive constant — the original implementation's MSE choice.

    logits, x : (B, 1, 64, 64); returns a scalar.
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    elif likelihood == "gaussian":
        nll = F.mse_loss(torch.sigmoid(logits), x, reduction="sum")
    else:
        raise ValueError(f"loss.likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    return nll / x.shape[0]


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent, averaged over the batch (Kingma & Welling 2014, app. B).

    mu, logvar : (B, D); returns (D,). Its sum is the KL term of every objective here.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=0)


def capacity(step: int, c_max: float, c_steps: int) -> float:
    """Capacity schedule C(step) = min(C_max, C_max·step/C_steps) (Burgess et al. 2018, eq. 8).

    A pure function of the global step, which the checkpoint stores; ``c_steps <= 0``
    means no annealing (C = C_max from the start).
    """
    if c_steps <= 0:
        return float(c_max)
    return float(min(c_max, c_max * max(step, 0) / c_steps))


def capacity_gamma(step: int, gamma: float, warmup_steps: int, start: int = 0) -> float:
    """Weight of |KL − C| at ``step``: γ·min(1, (step − start)/warmup_steps), i.e. a linear
    warm-up from 0 that begins at ``start`` (the end of a β = 1 warm start, if any);
    ``warmup_steps <= 0`` = γ throughout.

    Neither is in Burgess et al. (2018); ``docs/capacity_plateau.md`` measures both as
    remedies for the mean-image plateau.
    """
    if warmup_steps <= 0:
        return float(gamma)
    return float(gamma * min(1.0, max(step - start, 0) / warmup_steps))


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each latent independently across the batch (Kim & Mnih 2018, Alg. 1).

    z : (B, D) -> (B, D) samples of ∏_j q(z_j): every column keeps its values (marginal),
    the dependence between columns is destroyed.
    """
    order = torch.rand(z.shape, device=z.device, generator=generator).argsort(dim=0)
    return z.gather(0, order)


_STEPS_ATTR = "_bcvae_optimizer_steps"
_step_counter_installed = False


def _count_optimizer_steps(optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
    """Global post-step hook: count on every parameter how often an optimiser stepped it.

    Fused and foreach Adam update parameters without bumping their autograd version
    counters, so the counter below is what reveals such an update.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            setattr(p, _STEPS_ATTR, getattr(p, _STEPS_ATTR, 0) + 1)


def _update_stamp(module: nn.Module) -> list[tuple[int, int]]:
    """(autograd version, optimiser steps) of each parameter: changes whenever the parameter
    is modified in place by autograd-visible ops or stepped by any torch.optim optimiser."""
    return [(p._version, getattr(p, _STEPS_ATTR, 0)) for p in module.parameters()]


def _guard_update_order(discriminator: nn.Module, tc: Tensor) -> None:
    """Raise during ``backward()`` if D was updated after ``tc`` was computed from it.

    ``tc``'s graph reads D's parameters through detached views that share their storage:
    stepping D before the VAE's backward pass would silently give the encoder gradients of
    the *new* D (Kim & Mnih 2018, Alg. 2 updates the VAE first).
    """
    global _step_counter_installed
    if not tc.requires_grad:
        return
    if not _step_counter_installed:
        register_optimizer_step_post_hook(_count_optimizer_steps)
        _step_counter_installed = True
    stamp = _update_stamp(discriminator)

    def check(grad: Tensor) -> Tensor:
        if _update_stamp(discriminator) != stamp:
            raise RuntimeError(
                "FactorVAE update order: the discriminator was updated between the VAE's forward pass and "
                "its backward pass; call loss.backward() and step the VAE before stepping the discriminator "
                "(Kim & Mnih 2018, Alg. 2)")
        return grad

    tc.register_hook(check)


def _centred(z: Tensor, centre: bool) -> Tensor:
    """z (B, D) minus its batch mean when ``centre`` (``loss.disc_centre``), else z."""
    return z - z.mean(dim=0, keepdim=True) if centre else z


def discriminator_tc(discriminator: nn.Module, z: Tensor, centre: bool = False) -> Tensor:
    """TC(z) ≈ E_q(z)[log D(z) / (1 − D(z))] = mean(logit₀ − logit₁) (Kim & Mnih 2018, eq. 3).

    D is evaluated with detached parameters: the gradient reaches the encoder through z
    but never D's ``.grad``, which only ``discriminator_loss`` may fill. A guard checks at
    backward time that D was not updated in between (``_guard_update_order``).
    """
    params = {name: p.detach() for name, p in discriminator.named_parameters()}
    logits = torch.func.functional_call(discriminator, params, (_centred(z, centre),))   # (B, 2)
    tc = (logits[:, 0] - logits[:, 1]).mean()
    _guard_update_order(discriminator, tc)
    return tc


def discriminator_loss(discriminator: nn.Module, z: Tensor, z_other: Tensor,
                       centre: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """FactorVAE discriminator loss (Kim & Mnih 2018, Alg. 2): cross-entropy of D on codes
    of one batch (label 0, "from q(z)") and on dimension-wise permuted codes of an
    independent batch (label 1, "from ∏_j q(z_j)"); both halves weigh equally.

    z, z_other : (B, D) and (B', D); detached here, so no gradient reaches the encoder.
    centre: each half minus its own batch mean (``loss.disc_centre``), as ``discriminator_tc`` sees z.
    terms: "disc_loss", "disc_acc" (fraction of the 2 halves classified correctly).
    """
    z_perm = _centred(permute_dims(z_other.detach()), centre)
    logits = discriminator(torch.cat([_centred(z.detach(), centre), z_perm]))   # (B + B', 2)
    labels = torch.cat([z.new_zeros(z.shape[0], dtype=torch.long),
                        z.new_ones(z_perm.shape[0], dtype=torch.long)])
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    loss = 0.5 * (per_sample[: z.shape[0]].mean() + per_sample[z.shape[0]:].mean())
    correct = (logits.argmax(dim=1) == labels).float()
    acc = 0.5 * (correct[: z.shape[0]].mean() + correct[z.shape[0]:].mean())
    return loss, {"disc_loss": loss.detach(), "disc_acc": acc.detach()}


def _log_density_matrix(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z_i,d | x_j) = log N(z_i,d; μ_j,d, σ²_j,d) for every pair (i, j): (B, B, D).

    Where σ_j,d underflows, z_j,d = μ_j,d exactly and exp(−log σ²) is infinite: the square term
    of such a pair is taken as 0 (its sample's ε² is lost with σ) instead of 0·inf = NaN. Only
    an unstable run gets there; elsewhere the values and gradients are the plain formula's."""
    diff = z.unsqueeze(1) - mu.unsqueeze(0)
    square = (diff.pow(2) * torch.exp(-logvar.unsqueeze(0))).masked_fill(diff == 0, 0.0)
    return -0.5 * (LOG_2PI + logvar.unsqueeze(0) + square)


def _log_mss_weights(batch: int, dataset_size: int) -> Tensor:
    """Log stratified weights (Chen et al. 2018, app. C.2), (B, B), each row summing to 1.

    Row i estimates q(z_i) = (1/N)·Σ_n q(z_i|n): weight 1/N on its own x_i, (N−M)/(N·M) on
    one other element (the next one, cyclically) and 1/M on the rest, M = B − 1. Explicit
    indices, because the strided-view version in circulation misplaces the diagonal.
    """
    n, m = float(dataset_size), float(batch - 1)
    w = torch.full((batch, batch), 1.0 / m, dtype=torch.float64)
    i = torch.arange(batch)
    w[i, (i + 1) % batch] = (n - m) / (n * m)
    w[i, i] = 1.0 / n
    return w.log()


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int,
                     estimator: str = "mss") -> tuple[Tensor, Tensor, Tensor]:
    """β-TCVAE decomposition of the KL (Chen et al. 2018, eq. 2) into batch means of
    index-code MI  E[log q(z|x) − log q(z)], total correlation  E[log q(z) − Σ_d log q(z_d)]
    and dimension-wise KL  E[Σ_d log q(z_d) − log p(z_d)].

    ``"mws"`` (minibatch weighted sampling, Chen et al. 2018 §3.1 and app. C.1):
    log q(z_i) ≈ logsumexp_j log q(z_i|x_j) − log(N·B), likewise per dimension. Its log q
    values sit below the truth by an amount that depends on how much the batch's posteriors
    overlap: ≈ log N where every z_i has density under many x_j, falling to log B where
    each z_i has density only under its own x_i. So MI carries an offset between +log B and
    +log N, and TC and dw-KL offsets that move with it (+(D−1)·log N and −D·log N in the
    fully overlapping case). The offsets change as training separates the posteriors, so
    they are not constants and do bias the gradients.
    ``"mss"`` (minibatch stratified sampling, app. C.2) weighs each term by
    ``_log_mss_weights``: consistent (exact as B → N), but at B ≪ N a batch misses the
    dataset neighbours whose posteriors overlap each z_i, so log q(z) reads low and TC with
    it: −0.56 nats at B = 64 on a code whose TC is exactly 0 (tests/test_losses.py), and on
    the trained β-TCVAE of docs/full_length.md −3.4 nats at B = 64, −1.0 at B = 4096
    (``bcvae tc-bias``).
    MI + TC + dw-KL equals the Monte-Carlo KL  E[log q(z|x) − log p(z)]  under either.

    z, mu, logvar : (B, D) with B >= 2; dataset_size N >= B. Returns three scalars.
    """
    batch = z.shape[0]
    if batch < 2 or dataset_size < batch:
        raise ValueError(f"β-TCVAE needs 2 <= batch size <= dataset_size, got batch {batch}, "
                         f"dataset_size {dataset_size!r}")
    mat = _log_density_matrix(z, mu, logvar)                         # (B, B, D)
    log_qz_x = mat.diagonal(dim1=0, dim2=1).sum(dim=0)               # (B,)  log q(z_i|x_i)
    if estimator == "mws":
        log_nm = math.log(dataset_size * batch)
        log_qz = torch.logsumexp(mat.sum(dim=2), dim=1) - log_nm     # (B,)
        log_qz_d = torch.logsumexp(mat, dim=1) - log_nm              # (B, D)
    elif estimator == "mss":
        log_w = _log_mss_weights(batch, dataset_size).to(mat)
        log_qz = torch.logsumexp(mat.sum(dim=2) + log_w, dim=1)
        log_qz_d = torch.logsumexp(mat + log_w.unsqueeze(2), dim=1)
    else:
        raise ValueError(f"loss.tc_estimator must be 'mss' or 'mws', got {estimator!r}")
    log_pz_d = -0.5 * (LOG_2PI + z.pow(2))                           # (B, D)
    mi = (log_qz_x - log_qz).mean()
    tc = (log_qz - log_qz_d.sum(dim=1)).mean()
    dw_kl = (log_qz_d - log_pz_d).sum(dim=1).mean()
    return mi, tc, dw_kl


@torch.no_grad()
def kl_split(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, terms: dict) -> dict[str, Tensor]:
    """Diagnostics: the KL split as  KL = I(x; z) + KL(q(z) ‖ p(z))  (Hoffman & Johnson 2016;
    Chen et al. 2018, eq. 2), estimated on the batch with minibatch stratified sampling.

    "mi" is the index-code mutual information: how many nats of the KL tell images
    apart. "marginal_kl" (= TC + dimension-wise KL) is the rest: nats spent on the
    aggregate posterior q(z) differing from N(0, I), e.g. a shift of μ common to every
    image. A code that ignores x has mi = 0 whatever its KL. Both are estimates on B
    samples (mi ≤ log N); they sum to the Monte-Carlo KL, not exactly to "kl".
    mi reaches its ceiling log N as soon as the B posteriors of a batch stop overlapping,
    whatever the code's true I(x; z): a value near log N says "the batch's codes are apart",
    not "the code identifies every image". (The truth is bounded too: I(x; z) ≤ H(x) = log N.)
    Reuses the β-TCVAE objective's own values when present. No gradients, no RNG.
    Computed in float64, so that posterior variances below float32's range (log σ² < −88,
    which an unstable run reaches) keep their sample's ε² term in log q(z|x).
    """
    if {"mi", "tc", "dw_kl"} <= terms.keys():
        mi, tc, dw_kl = terms["mi"], terms["tc"], terms["dw_kl"]
    else:
        mi, tc, dw_kl = tc_decomposition(z.double(), mu.double(), logvar.double(), dataset_size, "mss")
    return {"mi": mi.to(z.dtype), "marginal_kl": (tc + dw_kl).to(z.dtype)}


def conditional_warm_start(loss_cfg: Any) -> bool:
    """Whether the β = 1 warm start waits for the decoder to read z (``loss.warm_start_until_mi``
    > 0) rather than lasting exactly ``loss.warm_start_steps`` updates."""
    return loss_cfg.warm_start_until_mi > 0


def warm_start_over(loss_cfg: Any, steps_done: int, mi: float) -> bool:
    """Whether a conditional β = 1 warm start (``loss.warm_start_until_mi`` > 0) ends after
    ``steps_done`` updates, the last of which read I(x; z) = ``mi`` nats on its batch.

    It ends once both hold: at least ``loss.warm_start_steps`` updates, and the decoder reads
    the code — the batch's I(x; z) (``kl_split``) at least ``loss.warm_start_until_mi``.
    On the mean-image plateau I(x; z) ≈ 0 however long the plain ELBO runs, so a fixed-length
    warm start can hand a decoder that ignores z to the capacity term, which then holds
    KL = C with no information (docs/capacity_plateau.md). Stateless: the caller records the
    step at which it returned True (the trainer keeps it in its checkpoint).
    """
    long_enough = steps_done >= loss_cfg.warm_start_steps
    if not conditional_warm_start(loss_cfg):
        return long_enough
    return long_enough and mi >= loss_cfg.warm_start_until_mi


def warm_end_for(loss_cfg: Any, ended_at: int | None) -> float | None:
    """``vae_loss``'s ``warm_end`` for a run whose conditional warm start ended at step ``ended_at``
    (None: it has not): None for a fixed-length warm start (``loss.warm_start_steps`` decides),
    else ``ended_at``, or ``math.inf`` while the warm start lasts."""
    if not conditional_warm_start(loss_cfg):
        return None
    return math.inf if ended_at is None else ended_at


def _regulariser(loss_cfg: Any, mu: Tensor, logvar: Tensor, z: Tensor, kl_dims: Tensor, step: int,
                 discriminator: nn.Module | None, dataset_size: int | None,
                 warm_end: float | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Everything of the objective but the reconstruction term; see ``vae_loss``. kl_dims : (D,)."""
    objective = loss_cfg.objective
    kl = kl_dims.sum()
    if objective == "beta":
        return loss_cfg.beta * kl, {}
    if objective == "capacity":
        c = capacity(step, loss_cfg.c_max, loss_cfg.c_steps)
        gap = (kl - c).abs()
        terms = {"C": c, "kl_gap": gap}
        end = loss_cfg.warm_start_steps if warm_end is None else warm_end
        if step < end:                         # plain ELBO first (β = 1), C already counting
            return kl, {**terms, "gamma": 0.0}
        gamma = capacity_gamma(step, loss_cfg.gamma, loss_cfg.gamma_warmup_steps, int(end))
        if loss_cfg.kl_scale == "batch_over_n":   # the original implementation's γ·(B/N)
            if dataset_size is None:
                raise ValueError("loss.kl_scale 'batch_over_n' needs dataset_size (the training-split size)")
            gamma = gamma * mu.shape[0] / dataset_size
        if loss_cfg.latent_kl_max > 0:            # no latent above latent_kl_max nats (not in the paper)
            excess = (kl_dims - loss_cfg.latent_kl_max).clamp(min=0).sum()
            return gamma * (gap + excess), {**terms, "gamma": gamma, "kl_excess": excess}
        return gamma * gap, {**terms, "gamma": gamma}
    if objective == "factor":
        if discriminator is None:
            raise ValueError("loss.objective 'factor' needs the discriminator passed to vae_loss")
        tc = discriminator_tc(discriminator, z, loss_cfg.disc_centre)
        return kl + loss_cfg.factor_gamma * tc, {"tc": tc}
    if objective == "btcvae":
        if dataset_size is None:
            raise ValueError("loss.objective 'btcvae' needs dataset_size (the training-split size)")
        mi, tc, dw_kl = tc_decomposition(z, mu, logvar, dataset_size, loss_cfg.tc_estimator)
        penalty = loss_cfg.tc_alpha * mi + loss_cfg.tc_beta * tc + loss_cfg.tc_gamma * dw_kl
        return penalty, {"mi": mi, "tc": tc, "dw_kl": dw_kl}
    raise ValueError(f"loss.objective must be 'beta', 'capacity', 'factor' or 'btcvae', got {objective!r}")


def vae_loss(loss_cfg: Any, x: Tensor, logits: Tensor, mu: Tensor, logvar: Tensor, z: Tensor,
             step: int, discriminator: nn.Module | None = None,
             dataset_size: int | None = None, warm_end: float | None = None) -> tuple[Tensor, dict[str, Any]]:
    """The objective named by ``loss_cfg.objective``; returns ``(loss, terms)``.

    * ``"beta"``     rec + β·KL                          (Higgins et al. 2017, eq. 4)
    * ``"capacity"`` rec + γ·|KL − C(step)|               (Burgess et al. 2018, eq. 8); optionally
      + γ·Σ_j max(0, KL_j − ``latent_kl_max``), a cap on each latent (not in the paper);
      γ warmed up from 0 (``gamma_warmup_steps``) or the plain ELBO for ``warm_start_steps``
      (``warm_end``, when given, is the step the β = 1 warm start ends at instead: the step a
      conditional warm start ended, ``math.inf`` while it lasts; see ``warm_start_over``);
      ``kl_scale: batch_over_n`` multiplies γ by B/N as the original implementation did
    * ``"factor"``   rec + KL + γ·TC, TC from D's logits (Kim & Mnih 2018, eq. 2–3); needs
      ``discriminator`` — see the module docstring for the update order
    * ``"btcvae"``   rec + α·MI + β·TC + γ·dw-KL          (Chen et al. 2018, eq. 4); needs
      ``dataset_size`` (N of the training split)

    x, logits : (B,1,64,64); mu, logvar, z : (B, D). terms: "loss", "rec", "kl",
    "kl_per_dim" (D,), plus "C", "kl_gap", "gamma" | "tc" | "mi", "tc", "dw_kl" by objective,
    and, when ``dataset_size`` is given, the diagnostics "mi" and "marginal_kl" (``kl_split``).
    """
    rec = recon_nll(logits, x, loss_cfg.likelihood)
    kl_dims = kl_per_dim(mu, logvar)
    kl = kl_dims.sum()
    penalty, terms = _regulariser(loss_cfg, mu, logvar, z, kl_dims, step, discriminator, dataset_size, warm_end)
    loss = rec + penalty
    terms.update(loss=loss, rec=rec, kl=kl, kl_per_dim=kl_dims)
    if dataset_size is not None and z.shape[0] >= 2:
        terms.update(kl_split(z, mu, logvar, dataset_size, terms))
    return loss, {k: v.detach() if isinstance(v, Tensor) else v for k, v in terms.items()}
