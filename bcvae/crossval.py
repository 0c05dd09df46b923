"""``bcvae cv``: k-fold cross-validation of one experiment.

Every fold is trained (or resumed) as its own run in one W&B group; then each
validation loss and evaluation score is summarised over the folds as mean ± std
(``ddof=1``), written to ``<run_dir>/<name>/cv_summary.json`` and logged to a
``<name>-cv`` W&B run.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from bcvae import config as config_mod
from bcvae import distributed, track
from bcvae.checkpoint import write_json
from bcvae.config import Config
from bcvae.errors import TrainingError
from bcvae.train import Trainer

log = logging.getLogger("bcvae")


def cross_validate(cfg: Config, *, fresh: bool = False) -> dict:
    """Train folds 0..k-1 (one W&B group), then summarise mean ± std over folds.

    Writes ``<run_dir>/<name>/cv_summary.json`` and logs the summary to W&B.
    """
    per_fold = []
    try:  # Trainer, not train.train(): that ends a torchrun worker's process group after one fold
        for fold in range(cfg.data.k):
            fold_cfg = copy.deepcopy(cfg)
            fold_cfg.data.fold = fold
            per_fold.append(Trainer(fold_cfg, fresh=fresh, group=cfg.name).fit())
        rank = distributed.start()[0]
    finally:
        distributed.end()
    summary = summarise_folds(per_fold, cfg.name)
    out = {"experiment": cfg.name, "folds": cfg.data.k, "metrics": summary}
    if rank == 0:
        write_json(Path(cfg.run_dir) / cfg.name / "cv_summary.json", out)
        _log_cv_summary(cfg, summary)
    return out


def summarise_folds(per_fold: list[dict], name: str) -> dict[str, dict]:
    """``{key: {"mean", "std", "values"}}`` of every ``val/`` and ``eval/`` number in the folds'
    summaries; a key some fold lacks raises :class:`TrainingError` naming the folds."""
    keys = sorted({k for s in per_fold for k, v in s.items()
                   if isinstance(v, (int, float)) and k.startswith(("val/", "eval/"))})
    for key in keys:  # a mean over the folds that happen to have a number would hide the others
        missing = [fold for fold, s in enumerate(per_fold) if key not in s]
        if missing:
            raise TrainingError(f"cross-validation of {name}: fold(s) {missing} have no {key!r} in their "
                                f"summary.json; rerun `bcvae cv` to finish them")
    summary = {}
    for key in keys:
        values = np.array([s[key] for s in per_fold], dtype=float)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "values": values.tolist()}
    return summary


def _log_cv_summary(cfg: Config, summary: dict) -> None:
    for key, s in summary.items():
        if "kl_dim" not in key:
            log.info("%-28s %.4f ± %.4f  (n=%d)", key, s["mean"], s["std"], len(s["values"]))
    tracker = track.tracker_for(Path(cfg.run_dir) / cfg.name / "cv", config_mod.to_dict(cfg), cfg.log,
                                name=f"{cfg.name}-cv", group=cfg.name)
    flat = {f"cv/{k}/mean": s["mean"] for k, s in summary.items()}
    flat.update({f"cv/{k}/std": s["std"] for k, s in summary.items()})
    tracker.log(flat, step=0)
    tracker.summary(flat)
    tracker.finish()
