"""``bcvae reproduce``: train the comparison experiments, evaluate every metric,
write ``results/<budget>.json`` and the markdown table of the README.

Each (experiment, seed) is trained on folds 1..9 with fold 0 held out, in a
subprocess (``python -m bcvae train``) so several can run side by side with
one thread each; a finished run is not retrained (rerunning the command
resumes or reuses it). Metrics are computed here from the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch import nn

from bcvae import config, evaluate, latents, track, viz
from bcvae.checkpoint import load_model, run_path, write_json
from bcvae.encode import make_encode
from bcvae.errors import ArgumentParser, TrainingError

log = logging.getLogger("bcvae")

EXPERIMENTS = {
    "cpu": ["capacity25_cpu", "capacity13_cpu", "beta1_cpu", "beta4_cpu", "factorvae_cpu"],
    "full": ["capacity25", "beta1", "beta4", "factorvae", "btcvae"],
}
METRICS = config.METRICS  # every row scores every metric
COLUMNS = [("recon_nll", "rec. NLL (val)"), ("kl", "KL (val)"), ("mig", "MIG"),
           ("factor_vae_score", "FactorVAE"), ("beta_vae_score", "BetaVAE"),
           ("dci_disentanglement", "DCI dis."), ("dci_informativeness", "DCI inf."), ("sap", "SAP")]
ROW_VERSION = 3  # bumped when a row gains a field: cached rows of an older layout are scored again


RUN_NAME = "{experiment}-seed{seed}"


def run_name(experiment: str, seed: int, pattern: str = RUN_NAME) -> str:
    """The run (``runs/<name>/fold0``) of one seed: ``capacity25-seed0`` by default; ``pattern=
    "{experiment}"`` names the run ``make train EXP=capacity25`` writes."""
    return pattern.format(experiment=experiment, seed=seed)


def train_one(experiment: str, seed: int, *, threads: int, overrides: list[str], root: Path,
              name: str | None = None) -> Path:
    """Train (or resume) one seed in a subprocess as run ``name`` (default
    ``<experiment>-seed<seed>``); returns its run directory."""
    name = name or run_name(experiment, seed)
    args = [sys.executable, "-m", "bcvae", "train", experiment, f"seed={seed}", "data.fold=0",
            f"name={name}", f"train.threads={threads}", "log.progress=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    tic = time.perf_counter()
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TrainingError(f"training {name} failed (exit {proc.returncode}): {last}")
    log.info("trained %s in %.1f min", name, (time.perf_counter() - tic) / 60)
    run_dir = root / "runs"
    for o in overrides:
        if o.startswith("run_dir="):
            run_dir = Path(o.split("=", 1)[1])
    return run_path(run_dir, name, 0)


def metrics_code_digest() -> str:
    """sha256 of the metric implementations (``bcvae/metrics/*.py``): a cached row scored by
    other metric code (a changed estimator or default) is scored again, never reused."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "metrics").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def evaluate_run(run_dir: Path, experiment: str, seed: int, budget: str, num_points: int) -> dict:
    """One results row: NLL and KL over the whole held-out fold, every metric, the latent analysis.

    The row is kept in ``run_dir/results_row.json``; it is reused while the
    checkpoint's step, the metric settings and the metric code are unchanged.
    """
    model, cfg, ckpt = load_model(run_dir / "checkpoint.pt")
    cached = run_dir / "results_row.json"
    key = {"row": ROW_VERSION, "step": ckpt["step"], "metrics": list(METRICS), "num_points": num_points, "budget": budget,
           "metrics_code": metrics_code_digest()}
    rows = track.read_jsonl(run_dir / "metrics.jsonl")
    if cached.exists():
        row = json.loads(cached.read_text())
        if row.get("cache_key") == key:
            # the switch-on order is read from the log, not scored: always current
            return {**row, **latents.switch_on_summary(rows, cfg.loss)}
    result = evaluate.evaluate_model(model, cfg, ckpt, run_dir / "checkpoint.pt", METRICS, seed=seed, num_points=num_points)
    write_json(run_dir / "eval.json", result)
    s = result["scores"]
    heldout = evaluate.model_heldout_loss(model, cfg, ckpt, seed=seed)  # the whole held-out fold
    encode = make_encode(model, next(model.parameters()).device)
    row = {
        "experiment": experiment, "objective": cfg.loss.objective, "seed": seed, "budget": budget,
        "steps": ckpt["step"], "recon_nll": heldout["val/rec"], "kl": heldout["val/kl"],
        "mig": s.get("mig"), "factor_vae_score": s.get("factor_vae"), "beta_vae_score": s.get("beta_vae"),
        "dci_disentanglement": (s.get("dci") or {}).get("disentanglement"),
        "dci_informativeness": (s.get("dci") or {}).get("informativeness"), "sap": s.get("sap"),
        "kl_per_dim": [heldout[f"val/kl_dim/{i}"] for i in range(cfg.model.z_dim)],
        **latents.switch_on_summary(rows, cfg.loss),
        **latent_factors(encode),
        "provenance": result.get("provenance"), "run_dir": str(run_dir),
        "eval_settings": result.get("settings"), "eval_seconds": result.get("seconds"), "cache_key": key,
    }
    write_json(cached, row)
    return row


def latent_factors(encode) -> dict:
    """A row's latent -> factor table (:func:`bcvae.latents.latent_factor_table`) and its sample size."""
    n = latents.FACTOR_IMAGES
    table = latents.latent_factor_table(encode, images_per_factor=n)
    return {"latent_factors": [{k: _plain(v) for k, v in r.items()} for r in table],
            "latent_factor_images_per_factor": n}


def row_model(row: dict, pretrained: Path = Path("pretrained")) -> tuple[Path, nn.Module] | None:
    """A results row's model on this machine and where it was loaded from: its run's checkpoint
    while still at the row's step, else the ``pretrained/<experiment>`` export of that run at that
    step; None when neither."""
    ckpt = Path(row.get("run_dir", "")) / "checkpoint.pt"
    if ckpt.is_file():
        model, _, saved = load_model(ckpt)
        if saved["step"] == row.get("steps"):
            return ckpt, model
    exported = exported_run(row, pretrained)
    return (exported, load_model(exported)[0]) if exported is not None else None


def rescore_latents(rows: list[dict], pretrained: Path = Path("pretrained")) -> list[dict]:
    """Score the latent -> factor table of every row again (in place) whose model is on this
    machine (:func:`row_model`), with the current sample size; the other rows keep theirs and
    are returned."""
    left = []
    for row in rows:
        found = row_model(row, pretrained)
        if found is None:
            left.append(row)
            continue
        source, model = found
        row.update(latent_factors(make_encode(model, next(model.parameters()).device)))
        log.info("%s seed %d: latent factors scored again from %s", row["experiment"], row["seed"], source)
    return left


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per experiment. A score that only some of an experiment's rows
    hold (rows written before ``bcvae reproduce`` recorded it) is marked with how many; a
    legend under the table says so."""
    head = "| experiment | objective | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    missing = False
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        group = [r for r in rows if r["experiment"] == exp]
        cells = []
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in group if r.get(key) is not None], dtype=float)
            missing |= len(values) < len(group)
            if len(values) == 0:
                cells.append("–")
                continue
            if len(values) == 1:
                cell = f"{values[0]:.3g}" if key in ("recon_nll", "kl") else f"{values[0]:.3f}"
            else:
                fmt = ".1f" if key in ("recon_nll", "kl") else ".3f"
                cell = f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt}}"
            cells.append(cell if len(values) == len(group) else f"{cell} ({len(values)} of {len(group)} seeds)")
        lines.append(f"| {exp} | {group[0]['objective']} | {len(group)} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "–: not in these rows; they were written before `bcvae reproduce` recorded that score "
                      "(each row's `provenance.created` says when)."]
    return "\n".join(lines)


TIE_ETA2 = 0.05  # factors this close to a latent's best η² are named with it: ~2× the estimate's error


def factor_label(entry: dict | None) -> str:
    """``"posX (0.93)"``; a latent whose runners-up score within :data:`TIE_ETA2` of its best
    factor names them all, best first: ``"posY/scale/posX (0.32/0.31/0.28)"``."""
    if entry is None:
        return "? (nan)"
    scores = entry.get("scores") or {entry["factor"]: entry["score"]}
    tied = sorted((f for f, v in scores.items() if v >= entry["score"] - TIE_ETA2), key=lambda f: -scores[f])
    return "/".join(tied) + " (" + "/".join(f"{scores[f]:.2f}" for f in tied) + ")"


def latent_report(rows: list[dict]) -> str:
    """For each capacity run: the order latents switched on and the factor each encodes."""
    out = []
    for r in rows:
        if r["objective"] != "capacity":
            continue
        factors = {d["latent"]: d for d in r["latent_factors"]}
        parts = [f"z{on['latent']}@{on['step']} → {factor_label(factors.get(on['latent']))}"
                 for on in r["switch_on_order"]]
        # rows of ROW_VERSION < 3 drew 32 images per value: 96 for shape
        rough = "" if "latent_factor_images_per_factor" in r else " (η² from 32 images per value: ± 0.1)"
        out.append(f"- {r['experiment']} seed {r['seed']}: " + ", ".join(parts) + rough)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bcvae reproduce", description=" ".join(__doc__.split("\n\n")[0].split()))  # first paragraph
    p.add_argument("--budget", choices=sorted(EXPERIMENTS), default="cpu")
    p.add_argument("--experiments", default="", help="comma-separated subset (default: all of the budget's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated, e.g. 0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="trainings side by side (one thread each when > 1)")
    p.add_argument("--num-points", type=int, default=10_000)
    p.add_argument("--out", default="results")
    p.add_argument("--no-train", action="store_true", help="evaluate the runs as they are (no training)")
    p.add_argument("--run-name", default=RUN_NAME,
                   help=f"name of each (experiment, seed) run, default {RUN_NAME!r}; '{{experiment}}' finds the "
                        "runs of `make train EXP=...` (with --no-train and one seed)")
    p.add_argument("--keep-rows", action="store_true",
                   help="keep the rows OUT/<budget>.json already holds for other (experiment, seed) pairs, "
                        "so seeds run under different names can share one table")
    p.add_argument("--rescore-latents", action="store_true",
                   help="train and evaluate nothing: score the latent -> factor tables of OUT/<budget>.json "
                        "again for every row whose model is on this machine (its run, or its pretrained/ "
                        "export), and rewrite the tables")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = p.parse_args(argv)
    if args.rescore_latents:
        return rescore_table(Path(args.out), args.budget, p)
    # Everything is checked before the first of hours of training starts.
    for o in args.overrides:
        if "=" not in o:
            p.error(f"override {o!r} must look like key=value (seeds are comma-separated: --seeds 0,1,2)")
    seeds = parse_seeds(args.seeds, p)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.num_points < 100:
        p.error(f"--num-points must be >= 100, got {args.num_points}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path.cwd()
    experiments = [e for e in args.experiments.split(",") if e] or EXPERIMENTS[args.budget]
    jobs = [(e, s) for e in experiments for s in seeds]
    names = run_names(jobs, args.run_name, p)
    kept = earlier_rows(Path(args.out) / f"{args.budget}.json", p) if args.keep_rows else []
    for (e, s), name in zip(jobs, names):  # a missing file or a bad override: one line naming it (ConfigError)
        config.load(root / "experiments" / f"{e}.yaml", [f"seed={s}", f"name={name}", *args.overrides])
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    if args.no_train:
        run_dirs = [run_path(root / "runs", name, 0) for name in names]
        missing = [str(d) for d in run_dirs if not (d / "checkpoint.pt").is_file()]
        if missing:
            p.error(f"--no-train: no trained run at {', '.join(missing[:3])}"
                    f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            run_dirs = list(pool.map(lambda j, name: train_one(*j, threads=threads, overrides=args.overrides,
                                                                root=root, name=name), jobs, names))
    rows = [evaluate_run(d, e, s, args.budget, args.num_points) for d, (e, s) in zip(run_dirs, jobs)]
    write_results(merge_rows(kept, rows, EXPERIMENTS.get(args.budget, [])), Path(args.out), args.budget)
    return 0


def rescore_table(out: Path, budget: str, parser: ArgumentParser) -> int:
    """``--rescore-latents``: the latent -> factor tables of ``out/<budget>.json`` scored again."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = earlier_rows(out / f"{budget}.json", parser, flag="--rescore-latents")
    if not rows:
        parser.error(f"--rescore-latents: no rows in {out / f'{budget}.json'}")
    left = rescore_latents(rows)
    write_results(rows, out, budget)
    for r in left:
        log.info("%s seed %d: model not on this machine, its table is kept as it was",
                 r["experiment"], r["seed"])
    return 0


def run_names(jobs: list[tuple[str, int]], pattern: str, parser: ArgumentParser) -> list[str]:
    """One distinct run name per (experiment, seed); a pattern that cannot tell them apart is a usage error."""
    try:
        names = [run_name(e, s, pattern) for e, s in jobs]
    except (KeyError, IndexError, ValueError) as err:
        parser.error(f"--run-name {pattern!r} is not a pattern of {{experiment}} and {{seed}} ({err!r})")
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        parser.error(f"--run-name {pattern!r} names several runs {clash!r}: include {{seed}} (and {{experiment}})")
    return names


def earlier_rows(path: Path, parser: ArgumentParser, key: str = "experiment", flag: str = "--keep-rows") -> list[dict]:
    """The rows an earlier run of a table command wrote to ``path`` (none when it does not exist):
    ``key`` is ``"experiment"`` for reproduce's tables, ``"row"`` for the plateau study's. A file
    that is not a list of rows with a string ``key`` and an integer seed is a usage error naming
    it and the option (``flag``) that read it, raised before any run is trained or evaluated."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        parser.error(f"{flag}: cannot read {path} ({err})")
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get(key), str) and isinstance(r.get("seed"), int) for r in rows):
        parser.error(f"{flag}: {path} is not a list of results rows with '{key}' and 'seed'")
    return rows


def merge_rows(kept: list[dict], new: list[dict], order: list[str], key: str = "experiment") -> list[dict]:
    """``new`` and the rows of ``kept`` for (``key``, seed) pairs ``new`` does not have, sorted by
    ``key`` (``order`` first, then as they come) and seed. ``key``: ``"experiment"`` for the
    results tables, ``"row"`` for the plateau study's."""
    fresh = {(r[key], r["seed"]) for r in new}
    rows = [r for r in kept if (r[key], r["seed"]) not in fresh] + list(new)
    rank = {e: i for i, e in enumerate(dict.fromkeys([*order, *(r[key] for r in rows)]))}
    return sorted(rows, key=lambda r: (rank[r[key]], r["seed"]))


def parse_seeds(text: str, parser: ArgumentParser) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else is a usage error naming the value."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}")
    if not seeds or any(not 0 <= s <= config.SEED_MAX for s in seeds):
        parser.error(f"--seeds must be integers in 0..{config.SEED_MAX}, got {text!r}")
    return seeds


def write_results(rows: list[dict], out: Path, budget: str, pretrained: Path = Path("pretrained")) -> None:
    """``out/<budget>.json``, ``.md`` and ``_curves.png``; curves of rows whose run is not on this
    machine come from the ``pretrained/<experiment>`` directory exported from that run."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{budget}.json", rows)
    table = markdown_table(rows)
    report = latent_report(rows)
    (out / f"{budget}.md").write_text(f"{table}\n\n{report}\n" if report else f"{table}\n")
    write_seeds_figure(rows, out / f"{budget}_curves.png", pretrained)
    print(table)
    if report:
        print(report)


def history_dir(row: dict, pretrained: Path) -> Path | None:
    """The directory holding a results row's training log (``metrics.jsonl``): its run directory,
    or, for a row kept from a run no longer on this machine, ``pretrained/<experiment>`` when that
    was exported from the same run at the same step (its ``info.json``); else None."""
    run_dir = Path(row.get("run_dir", ""))
    if (run_dir / "metrics.jsonl").is_file():
        return run_dir
    exported = exported_run(row, pretrained)
    return exported if exported is not None and (exported / "metrics.jsonl").is_file() else None


def exported_run(row: dict, pretrained: Path = Path("pretrained")) -> Path | None:
    """``pretrained/<experiment>`` when its ``info.json`` says it was exported from the row's run
    at the row's step, else None."""
    exported = Path(pretrained) / row["experiment"]
    try:
        info = json.loads((exported / "info.json").read_text())
    except (OSError, ValueError):
        return None
    source = Path(str(info.get("source_run", ""))).parts
    same_run = (bool(source) and Path(row.get("run_dir", "")).parts[-len(source):] == source
                and info.get("step") == row.get("steps"))
    return exported if same_run else None


def write_seeds_figure(rows: list[dict], path: Path, pretrained: Path = Path("pretrained")) -> Path | None:
    """Reconstruction NLL and KL over training of every seed, one row per experiment.

    A figure already at ``path`` is kept as it is when some row's training log is not on this
    machine: redrawn, it would lose those rows' curves (``--keep-rows`` on a machine that holds
    only the newest runs). Returns the path written, or None."""
    histories: dict[str, dict[str, list]] = {}
    missing = []
    for r in rows:
        found = history_dir(r, pretrained)
        if found is None:
            missing.append(f"{r['experiment']} seed {r['seed']}")
            continue
        histories.setdefault(r["experiment"], {})[f"seed {r['seed']}"] = track.load_history(found)
    if missing and path.exists():
        log.warning("%s kept as it was: no training log on this machine for %s", path, ", ".join(missing))
        return None
    for name in missing:
        log.warning("%s: no training log on this machine: left out of %s", name, path)
    if not histories:
        return None
    viz.seeds_figure(histories).savefig(path, dpi=110)
    return path
