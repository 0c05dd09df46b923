"""Every requested metric of one representation on shared codes: :func:`evaluate`."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Callable, Sequence

import numpy as np
import scipy
import sklearn

from bcvae import config
from bcvae.data.render import render_dsprites
from bcvae.metrics._beta_vae import beta_vae_details
from bcvae.metrics._codes import DEFAULT_FACTORS, Encode, Render, code_source, factor_columns, sample_factors
from bcvae.metrics._dci import dci
from bcvae.metrics._factor_vae import factor_vae_details
from bcvae.metrics._mig import latent_information, mig, mig_full_grid, mig_per_factor
from bcvae.metrics._sap import sap

log = logging.getLogger("bcvae")

METRICS = config.EVAL_METRICS
"""Every metric :func:`evaluate` knows; all but ``mig_full_grid`` run by default."""


def _keyword_defaults(fn: Callable, skip: tuple = ("render", "codes_table", "factors")) -> dict:
    """A metric's keyword settings and their defaults, so the record lists every setting used."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in skip}


def _check_request(metrics: Sequence[str], settings: dict, codes_table, logvar_table) -> None:
    unknown = [m for m in (*metrics, *settings) if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    for name in config.POSTERIOR_METRICS:
        if name in metrics and (codes_table is None or logvar_table is None):
            raise ValueError(f"{name} needs codes_table and logvar_table (the posterior of every image)")
    for name, overrides in settings.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"settings for {name} must be a dict of keyword arguments, got {overrides!r}")


def _sampled_metrics(metrics, source, factors, seed, num_points, settings, record, seconds) -> dict:
    """MIG, SAP and DCI on one shared sample: ``num_points`` training points + half as many test points."""
    scores = {}
    tic, spent = time.perf_counter(), source.seconds
    classes = sample_factors(num_points + num_points // 2, np.random.default_rng(seed))
    codes, labels = source(classes), classes[:, factor_columns(factors)]
    seconds["sample"] = time.perf_counter() - tic - (source.seconds - spent)
    sizes = {"mig": {}, "sap": {"num_train": num_points, "num_test": num_points // 2},
             "dci": {"num_train": num_points, "num_test": num_points // 2, "seed": seed}}
    for name, fn in (("mig", mig), ("sap", sap), ("dci", dci)):
        if name in metrics:
            kwargs = {**_keyword_defaults(fn), **sizes[name], **settings.get(name, {})}
            n = num_points if name == "mig" else len(codes)  # MIG uses the training points only
            tic, spent = time.perf_counter(), source.seconds
            log.info("metric %s ...", name)
            scores[name] = fn(codes[:n], labels[:n], **kwargs)
            if name == "mig":  # the five terms of the mean: which factors the score lacks
                terms = mig_per_factor(codes[:n], labels[:n], **kwargs)
                scores["mig_per_factor"] = {f: float(t) for f, t in zip(factors, terms)}
            if name == "dci":  # each factor's classifier accuracy, by name: can the factor be read at all
                per = scores["dci"]["informativeness_per_factor"]
                scores["dci"]["informativeness_per_factor"] = dict(zip(factors, per))
            seconds[name] = time.perf_counter() - tic - (source.seconds - spent)
            log.info("metric %s done in %.1f s", name, seconds[name])
            record[name] = {**kwargs, **({"num_points": n} if name == "mig" else {})}
    return scores


def _sampling_metrics(metrics, source, factors, seed, num_points, settings, record, seconds, notes, votes) -> dict:
    """BetaVAE and FactorVAE, each sampling its own image batches; FactorVAE's votes go to ``votes``."""
    scores = {}
    sizes = {"num_train": num_points, "num_eval": num_points // 2}
    for name, fn in (("beta_vae", beta_vae_details), ("factor_vae", factor_vae_details)):
        if name not in metrics:
            continue
        extra = {"num_variance_estimate": num_points} if name == "factor_vae" else {}
        kwargs = {**_keyword_defaults(fn), **sizes, **extra, **settings.get(name, {})}
        tic, spent = time.perf_counter(), source.seconds
        log.info("metric %s ...", name)
        details = fn(source, seed, factors=factors, **kwargs)
        seconds[name] = time.perf_counter() - tic - (source.seconds - spent)
        log.info("metric %s done in %.1f s (%.1f s rendering and encoding so far)", name, seconds[name],
                 source.seconds)
        scores[name], scores[f"{name}_train"] = details["eval_accuracy"], details["train_accuracy"]
        if name == "factor_vae":
            scores["factor_vae_active_dims"] = details["num_active_dims"]
            if "eval_accuracy_per_factor" in details:  # absent when no dimension is active
                scores["factor_vae_per_factor"] = details["eval_accuracy_per_factor"]
                votes.update({k: details[k] for k in ("active_dims", "active_sd", "points_per_dim", "classifier",
                                                       "train_votes", "eval_votes")})
        if "note" in details:
            notes.append(f"{name}: {details['note']}")
        record[name] = kwargs
    return scores


def evaluate(encode: Encode | None = None, metrics: Sequence[str] = METRICS[:5], seed: int = 0, *,
             num_points: int = 10_000, render: Render = render_dsprites, codes_table: np.ndarray | None = None,
             logvar_table: np.ndarray | None = None, factors: Sequence[str] = DEFAULT_FACTORS,
             representation: str = "mean", **settings: dict) -> dict:
    """Compute the requested metrics of one representation, timing each and recording every setting.

    Parameters
    ----------
    encode : uint8 images ``(B, 64, 64)`` -> codes ``(B, D)``; with ``render`` it is called
        on each needed image once (all metrics share the cache).
    codes_table : codes ``(737280, D)`` of every image in the real file's order; replaces
        encode and render (the fastest route when the whole dataset is encoded anyway).
    logvar_table : posterior log-variances ``(737280, D)``; only for ``mig_full_grid`` and
        ``latent_information``.
    num_points : disentanglement_lib's training-set size, used by every metric: MIG's
        points, SAP/DCI/BetaVAE/FactorVAE training points and FactorVAE's variance
        estimate; test/eval sets get ``num_points // 2``. 10,000 gives disentanglement_lib's
        defaults exactly.
    factors : names of the factors that count.
    representation : what ``encode`` returns ("mean" = encoder mean), recorded as given.
    **settings : per-metric keyword overrides, e.g. ``dci={"model": "gbt"}``, ``mig={"num_bins": 30}``.

    Returns
    -------
    ``{"scores": {...}, "settings": {...}, "seconds": {...}, "notes": [...]}``; scores
    ``mig``, ``sap``, ``dci`` (dict; its ``informativeness_per_factor`` by factor name),
    ``beta_vae`` and ``factor_vae`` (eval accuracy) with ``*_train`` accuracies,
    ``mig_per_factor`` (each factor's normalised gap, the terms MIG averages),
    ``factor_vae_active_dims`` and ``factor_vae_per_factor`` (the eval accuracy of the
    votes that fixed each factor); ``latent_information``: ``kl``, ``mutual_information``
    and ``marginal_kl``, each by latent ``z0 …``, and ``joint`` (the same of the whole code,
    with its total correlation). Seconds per metric exclude
    rendering and encoding, which is ``seconds["render_encode"]``. With FactorVAE,
    ``"factor_vae_votes"``: the active dimensions with their code sd, the factor each was
    assigned, the points of the score each wins and the train/eval vote counts
    ``(K factors, D_active)`` behind the score.
    """
    metrics = tuple(metrics)
    _check_request(metrics, settings, codes_table, logvar_table)
    source = code_source(encode, render, codes_table)
    record = {"seed": seed, "factors": list(factors), "representation": representation, "num_points": num_points,
              "codes": source.kind, "sklearn": sklearn.__version__, "numpy": np.__version__,
              "scipy": scipy.__version__}
    seconds, notes, scores, start = {}, [], {}, time.perf_counter()
    if {"mig", "sap", "dci"} & set(metrics):
        log.info("sampling %d + %d points for %s", num_points, num_points // 2,
                 ", ".join(m for m in metrics if m in ("mig", "sap", "dci")))
        scores.update(_sampled_metrics(metrics, source, factors, seed, num_points, settings, record, seconds))
    votes = {}
    scores.update(_sampling_metrics(metrics, source, factors, seed, num_points, settings, record, seconds, notes, votes))
    if "mig_full_grid" in metrics:
        kwargs = {**_keyword_defaults(mig_full_grid, skip=()), "seed": seed, **settings.get("mig_full_grid", {})}
        tic = time.perf_counter()
        scores["mig_full_grid"] = mig_full_grid(source.table, logvar_table, **kwargs)
        seconds["mig_full_grid"] = time.perf_counter() - tic
        import torch

        record["mig_full_grid"] = {**kwargs, "factors": list(kwargs["factors"]), "torch": torch.__version__}
    if "latent_information" in metrics:
        kwargs = {**_keyword_defaults(latent_information, skip=()), "seed": seed,
                  **settings.get("latent_information", {})}
        tic = time.perf_counter()
        split = latent_information(source.table, logvar_table, **kwargs)
        joint = split.pop("joint")
        scores["latent_information"] = {**{k: {f"z{j}": float(v) for j, v in enumerate(a)} for k, a in split.items()},
                                        "joint": joint}
        seconds["latent_information"] = time.perf_counter() - tic
        record["latent_information"] = kwargs
    seconds["render_encode"], seconds["total"] = source.seconds, time.perf_counter() - start
    record["images_encoded"] = source.n_encoded
    out = {"scores": scores, "settings": record, "seconds": seconds, "notes": notes}
    if votes:  # which factor each active dimension was assigned, and the votes behind it
        out["factor_vae_votes"] = {"factors": list(factors), **votes}
    return out
