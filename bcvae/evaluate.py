"""``bcvae eval``: disentanglement metrics of a trained run.

Encodes images in large no-grad batches, computes the requested metrics
(:mod:`bcvae.metrics`), prints a table, writes ``eval.json`` next to the
checkpoint and logs the scores to the run's own W&B run (resumed by id).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from bcvae import config, track
from bcvae.checkpoint import (checkpoint_path, export_pretrained, is_pretrained, load_checkpoint, load_model, read_json,
                              write_json)
from bcvae.encode import encode_all, image_source, make_encode
from bcvae.errors import CheckpointError, UsageError
from bcvae.config import Config
from bcvae.data import N_IMAGES, FoldData, load_all, load_split
from bcvae.losses import vae_loss, warm_end_for
from bcvae.model import VAE, discriminator_for


# ---------------------------------------------------------------- held-out losses

def mean_terms(sums: dict, count: int, prefix: str) -> dict[str, float]:
    """Accumulated ``terms`` sums -> flat ``{prefix/key: mean}`` with per-latent KL expanded."""
    out = {}
    for key, total in sums.items():
        value = total / count
        if torch.is_tensor(value) and value.ndim == 1:
            for i, v in enumerate(value.tolist()):
                out[f"{prefix}/kl_dim/{i}"] = v
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


def accumulate(sums: dict, terms: dict, weight: int = 1) -> None:
    """Add ``terms`` (tensors stay on their device: no host sync per step) times ``weight`` into ``sums``."""
    for key, value in terms.items():
        value = value.detach().float() if torch.is_tensor(value) else float(value)
        sums[key] = sums.get(key, 0.0) + value * weight


def validation_indices(n: int, batch_size: int, max_batches: int, seed: int) -> np.ndarray:
    """Positions of the held-out images to validate on: all of them, or, when
    ``max_batches`` limits it, a fixed random sample — the fold is stored sorted by
    factors, so its first images would all be small squares."""
    if not max_batches or max_batches * batch_size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[: max_batches * batch_size])


@torch.no_grad()
def heldout_terms(model: nn.Module, disc: nn.Module | None, data: FoldData, indices: np.ndarray, cfg: Config,
                  step: int, device: torch.device, *, seed: int, dataset_size: int, warm_end: float | None = None,
                  memory_format=torch.channels_last, on_batch=None) -> dict[str, float]:
    """Loss terms of ``model`` averaged over ``data[indices]`` as ``{"val/<term>": value}``.

    Batches are a random partition of ``indices`` (seeded by ``seed``, whatever their order):
    the batch estimators (MI, TC, dimension-wise KL, marginal KL) take a batch for a uniform
    sample of the dataset, and a fold is stored sorted by factors, so consecutive images are
    neighbours whose posteriors overlap (on the trained β-TCVAE, sorted batches of 1,024 read
    MI 7.6 nats where random ones read 11.5). ``warm_end``: as in ``vae_loss``. Runs under a
    forked RNG seeded with ``seed``, so it is reproducible and leaves the caller's random
    stream untouched.
    """
    indices = np.random.default_rng(seed).permutation(np.sort(indices))
    b = cfg.train.val_batch_size
    was_training = model.training
    model.eval()
    sums, count = {}, 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for j, start in enumerate(range(0, len(indices), b)):
            idx = indices[start:start + b]
            x = data.batch(idx, device).contiguous(memory_format=memory_format)
            logits, mu, logvar, z = model(x)
            _, terms = vae_loss(cfg.loss, x, logits, mu, logvar, z, step, discriminator=disc,
                                dataset_size=dataset_size, warm_end=warm_end)
            accumulate(sums, terms, weight=len(idx))
            count += len(idx)
            if on_batch is not None:
                on_batch(j, x, idx)
    model.train(was_training)
    return mean_terms(sums, count, "val")


# ---------------------------------------------------------------- metrics

def flatten_scores(scores: dict, prefix: str = "") -> dict[str, float]:
    """``{"dci": {"disentanglement": .9}}`` -> ``{"dci/disentanglement": .9}`` (numbers only)."""
    out = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            out.update(flatten_scores(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


# Metrics whose default sizes touch most of the 737,280 images: encoding the whole
# dataset once (in file order, from the fold cache) is then cheaper than rendering.
WHOLE_DATASET = {"beta_vae", "factor_vae", *config.POSTERIOR_METRICS}


def evaluate_checkpoint(ckpt_path: Path, metric_names, **kwargs) -> dict:
    """Metrics of one checkpoint's encoder mean; see :func:`evaluate_model`."""
    return evaluate_model(*load_model(ckpt_path), ckpt_path, metric_names, **kwargs)


def evaluate_model(model: VAE, cfg: config.Config, ckpt: dict, ckpt_path: Path, metric_names, *, seed: int = 0,
                   num_points: int = 10_000, full_grid_mig: bool = False) -> dict:
    """Metrics of a loaded checkpoint's encoder mean (:func:`load_model`); the result records every setting."""
    from bcvae import metrics  # lazy for start-up time: scikit-learn and scipy load in ~1 s

    device = next(model.parameters()).device
    names = tuple(dict.fromkeys((*metric_names, *(("mig_full_grid",) if full_grid_mig else ()))))
    posterior = [m for m in names if m in config.POSTERIOR_METRICS]
    tic = time.perf_counter()
    data = load_all(cfg.data) if WHOLE_DATASET & set(names) else None
    if posterior and len(data) != N_IMAGES:
        raise UsageError(f"{', '.join(posterior)}: needs the posterior of all {N_IMAGES:,} images, and "
                         f"{cfg.name}'s data holds {len(data):,}")
    if data is not None and len(data) == N_IMAGES:
        mu, logvar = encode_all(model, data, device)
        kwargs = {"codes_table": mu, "logvar_table": logvar if posterior else None}
    else:
        kwargs = {"encode": make_encode(model, device),
                  "render": image_source(ckpt["provenance"], lambda: load_all(cfg.data))}
    encode_seconds = time.perf_counter() - tic
    result = metrics.evaluate(metrics=names, seed=seed, num_points=num_points, **kwargs)
    result["seconds"]["encode_dataset"] = encode_seconds
    result.update({"step": ckpt["step"], "epoch": ckpt["epoch"], "checkpoint": str(ckpt_path),
                   "provenance": ckpt["provenance"], "experiment": cfg.name})
    return result


def heldout_loss(ckpt_path: Path, seed: int = 0) -> dict[str, float]:
    """Loss terms of a checkpoint over its whole held-out fold: ``{"val/rec": ..., "val/kl": ...}``."""
    return model_heldout_loss(*load_model(ckpt_path), seed=seed)


def model_heldout_loss(model: VAE, cfg: config.Config, ckpt: dict, seed: int = 0) -> dict[str, float]:
    """:func:`heldout_loss` of a loaded checkpoint (:func:`load_model`)."""
    device = next(model.parameters()).device
    disc = discriminator_for(cfg.loss.objective, cfg.model.z_dim)
    if disc is not None:
        if ckpt.get("disc") is None:
            raise CheckpointError(f"{cfg.name}: the held-out FactorVAE loss needs the discriminator, which a "
                                  "pretrained directory does not hold (its metrics and figures work)")
        disc.to(device).load_state_dict(ckpt["disc"])
    split = load_split(cfg.data)
    return heldout_terms(model, disc, split.val, np.arange(len(split.val)), cfg, ckpt["step"], device,
                         seed=seed, dataset_size=len(split.train),
                         warm_end=warm_end_for(cfg.loss, ckpt.get("warm_start_end")))


def main(args) -> dict:
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    known = config.EVAL_METRICS
    unknown = [m for m in names if m not in known]
    if unknown or not names:   # checked before anything loads, and before eval.json is touched
        raise UsageError(f"--metrics {args.metrics!r}: " + (f"unknown metric(s) {', '.join(unknown)}" if unknown
                         else "names no metric") + f"; choose from {', '.join(known)}")
    if args.num_points < 100:
        raise UsageError(f"--num-points must be >= 100, got {args.num_points}")
    ckpt_path = checkpoint_path(Path(args.run))
    result = evaluate_checkpoint(ckpt_path, names, seed=args.seed, num_points=args.num_points,
                                 full_grid_mig=args.full_grid_mig)
    scores = flatten_scores(result["scores"])
    width = max(map(len, scores), default=0) + 2
    print(f"{'metric':<{width}}{'score':>10}")
    for key, value in scores.items():
        print(f"{key:<{width}}{value:>10.4f}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    out, previous, why = _eval_file(ckpt_path, result)
    merged = merge_evaluations(previous, result)
    write_json(out, merged)
    kept = sorted(set(merged["scores"]) - set(result["scores"]))
    if kept:
        print(f"wrote {out} (kept its earlier {', '.join(kept)} of the same step and sampling){why}")
    elif previous is not None and set(previous.get("scores") or {}) - set(result["scores"]):
        print(f"wrote {out}, replacing an evaluation of another step or sampling "
              f"(step {previous.get('step')}, {_sampling(previous)}){why}")
    else:
        print(f"wrote {out}{why}")
    if not args.no_wandb and not is_pretrained(ckpt_path):
        _log_to_run(ckpt_path, result, scores)
    return result


def _eval_file(ckpt_path: Path, result: dict) -> tuple[Path, dict | None, str]:
    """Where ``bcvae eval`` writes ``result``, what that file holds now (None: nothing
    readable), and why when it is not the run's ``eval.json``.

    ``eval.json`` is the run's evaluation of record (the results tables and ``bcvae export``
    read it). A pretrained directory's stays as shipped, and so does a run's when it holds
    this very step evaluated with another sampling (``--seed``, ``--num-points``): that
    re-evaluation goes to ``eval_rerun.json`` beside it. An evaluation of a newer step
    replaces the record, which follows the weights.
    """
    if is_pretrained(ckpt_path):  # no W&B run to log to either
        rerun = ckpt_path / "eval_rerun.json"
        return rerun, read_json(rerun), ""
    record = ckpt_path.parent / "eval.json"
    previous = read_json(record)
    if (isinstance(previous, dict) and previous.get("step") == result["step"]
            and isinstance(previous.get("scores"), dict) and _sampling(previous) != _sampling(result)):
        rerun = ckpt_path.parent / "eval_rerun.json"
        return rerun, read_json(rerun), (f"; {record} holds this step with another sampling "
                                         f"({_sampling(previous)}) and stays as it is")
    return record, previous, ""


# What must agree for two evaluations' scores to sit in one file: the same weights and
# the same sampled points (every metric draws its points from these).
_SAMPLING = ("seed", "num_points", "representation", "factors")


def _sampling(result: dict) -> dict:
    settings = result.get("settings") or {}
    return {key: settings.get(key) for key in _SAMPLING}


def merge_evaluations(previous: dict | None, result: dict) -> dict:
    """The evaluation to store: ``result``, plus the metrics of ``previous`` it did not re-run.

    An evaluation of a few metrics (``bcvae eval RUN --metrics dci``) must not erase the
    others, which took minutes to compute and which ``bcvae export`` ships. Earlier scores
    are kept only when they are of the same checkpoint step and the same sampling
    (:data:`_SAMPLING`); otherwise they describe other weights or other points and
    ``result`` replaces them. Per-metric entries (``scores``, ``settings``, ``seconds``)
    merge key by key, the re-run metrics winning; notes are joined.
    """
    if (not isinstance(previous, dict) or not isinstance(previous.get("scores"), dict)
            or previous.get("step") != result["step"] or _sampling(previous) != _sampling(result)):
        return result
    merged = {**previous, **result}
    for key in ("scores", "settings", "seconds"):
        merged[key] = {**(previous.get(key) or {}), **result[key]}
    merged["notes"] = list(dict.fromkeys([*(previous.get("notes") or []), *result["notes"]]))
    return merged


def export(run: Path, out_dir: Path, name: str | None = None) -> list[Path]:
    """``bcvae export RUN DIR [--name NAME]``: a finished run's weights, config, ``eval.json`` and
    log as a pretrained directory (see :func:`bcvae.checkpoint.export_pretrained`).

    ``name`` replaces the run's name in the exported ``config.yaml`` (a seed trained as
    ``name=<exp>-seed1`` exported as ``pretrained/<exp>``); ``info.json`` keeps the source run."""
    ckpt_path = checkpoint_path(Path(run))
    ckpt = load_checkpoint(ckpt_path)
    eval_file = ckpt_path.parent / "eval.json"
    if not eval_file.is_file():
        raise CheckpointError(f"{eval_file} not found: run `bcvae eval {ckpt_path.parent}` first")
    result = json.loads(eval_file.read_text())
    if result.get("step") != ckpt["step"]:
        raise CheckpointError(f"{eval_file} is of step {result.get('step')}, the checkpoint of step "
                              f"{ckpt['step']}: run `bcvae eval {ckpt_path.parent}` again")
    history = track.read_jsonl(ckpt_path.parent / "metrics.jsonl") if (ckpt_path.parent / "metrics.jsonl").exists() else []
    cfg = ckpt["config"]
    if name is not None:
        cfg = {**cfg, "name": name}
        config.from_dict(cfg, source=f"bcvae export --name {name}")   # a name that is no directory name: one line
    return export_pretrained(ckpt, Path(out_dir), config_yaml=yaml.safe_dump(cfg, sort_keys=False),
                             eval_result=result, history=history, source=str(ckpt_path.parent))


def _log_to_run(ckpt_path: Path, result: dict, scores: dict) -> None:
    ckpt = load_checkpoint(ckpt_path)
    cfg = config.from_dict(ckpt["config"])
    tracker = track.tracker_for(ckpt_path.parent, ckpt["config"], cfg.log, name=f"{cfg.name}-fold{cfg.data.fold}",
                                group=cfg.name, run_id=ckpt.get("wandb_run_id"))
    tracker.log({f"eval/{k}": v for k, v in scores.items()}, step=result["step"])
    tracker.summary({f"eval/{k}": v for k, v in scores.items()})
    tracker.finish()
