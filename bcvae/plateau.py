"""``bcvae plateau``: the mean-image plateau study of the capacity objective.

Every objective starts with a decoder that draws the mean image (reconstruction
NLL ≈ 570 nats). At Burgess et al.'s settings (γ = 1000, C 0 → 25 nats over
100k steps) the capacity term then holds KL = C with nats that carry no
information (I(x; z) ≈ 0). This study trains ``capacity25_paper.yaml`` with
one change per row (γ, or a remedy), for a few thousand steps and several
seeds, and reports for each run when it left the plateau, how much of its KL
was information at that moment, and how tightly KL followed C afterwards.
The table goes to ``results/plateau.md`` (and ``docs/capacity_plateau.md``
quotes it); every row states the command that trains it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bcvae.checkpoint import run_path
from bcvae.errors import ArgumentParser
from bcvae.reproduce import earlier_rows, merge_rows, parse_seeds, train_one

log = logging.getLogger("bcvae")

EXPERIMENT = "capacity25_paper"
PLATEAU_NLL = 500.0
"""A run has left the plateau from the first logged step whose training NLL stays below this to the end."""
GAP_TOLERANCE = 1.0
"""|KL − C| in nats below which the capacity constraint counts as holding (Burgess et al.'s target)."""

# key -> (what changes, overrides of capacity25_paper.yaml). One change per row.
ROWS = {
    "gamma1000": ("γ = 1000 (the paper)", []),
    "gamma300": ("γ = 300", ["loss.gamma=300"]),
    "gamma100": ("γ = 100", ["loss.gamma=100"]),
    "warmup2k": ("γ warm-up 0 → 1000 over 2k steps", ["loss.gamma_warmup_steps=2000"]),
    "warmup10k": ("γ warm-up 0 → 1000 over 10k steps", ["loss.gamma_warmup_steps=10000"]),
    "warmstart1k": ("β = 1 for the first 1k steps", ["loss.warm_start_steps=1000"]),
    "warmstart1k-ramp2k": ("β = 1 for 1k steps, then γ 0 → 1000 over 2k",
                           ["loss.warm_start_steps=1000", "loss.gamma_warmup_steps=2000"]),
    "warmstart-mi10-ramp2k": ("β = 1 for ≥ 1k steps and until a batch's I(x; z) ≥ 10 nats, then γ 0 → 1000 over 2k",
                              ["loss.warm_start_steps=1000", "loss.warm_start_until_mi=10",
                               "loss.gamma_warmup_steps=2000"]),
    "lr1e-4": ("Adam lr 1e-4 (disentanglement_lib)", ["train.lr=1.0e-4"]),
    "beta2-0.99": ("Adam β₂ = 0.99", ["train.adam_beta2=0.99"]),
    "eps1e-4": ("Adam ε = 1e-4", ["train.adam_eps=1.0e-4"]),
    "clip100": ("gradient norm clipped to 100", ["train.grad_clip=100"]),
    "sgd1e-4": ("SGD, momentum 0.9, lr 1e-4 (no per-parameter scaling)", ["train.optimizer=sgd", "train.lr=1.0e-4"]),
    "sgd1e-3": ("SGD, momentum 0.9, lr 1e-3", ["train.optimizer=sgd", "train.lr=1.0e-3"]),
    "leaky": ("leaky encoder units, slope 0.01 (no encoder layer can die)", ["model.arch=burgess_leaky"]),
}
# Settings of every plateau run that do not change its trajectory: no metrics, fewer pictures.
QUIET = ["eval.at_end=false", "log.every_images=4000", "train.val_max_batches=8"]


def run_name(key: str, seed: int) -> str:
    return f"plateau-{key}-seed{seed}"


def command(key: str, seed: int, steps: int) -> str:
    """The ``make`` command that trains one row's run (what a reader types)."""
    args = " ".join([f"seed={seed}", f"train.max_steps={steps}", *ROWS[key][1]])
    return f'make train EXP={EXPERIMENT} ARGS="{args}"'


def exit_summary(rows: list[dict], threshold: float = PLATEAU_NLL, tolerance: float = GAP_TOLERANCE) -> dict:
    """What one run's training log says about the plateau.

    ``rows``: the run's logged training rows (``train/rec``, ``train/kl``, ``train/mi``,
    ``train/C``; each an average over the logging window). Returns the exit step — the
    first logged step from which the NLL stays below ``threshold`` to the end of the log,
    so a run that dips below and falls back has not left (None while on the plateau);
    I(x; z), KL and C there; the largest KL − C and |KL − C| from the exit on; the step from which |KL − C| stays below ``tolerance`` nats to the
    end of the log (None if it never settles); and the last row's values.
    """
    rows = sorted((r for r in rows if "train/rec" in r), key=lambda r: r["step"])
    if not rows:
        raise ValueError("no training rows logged")
    last = rows[-1]
    out = {"steps": last["step"], "exit_step": None, "mi_at_exit": None, "kl_at_exit": None, "C_at_exit": None,
           "max_overshoot_after": None, "max_abs_gap_after": None, "settled_step": None,
           "final_rec": last["train/rec"], "final_kl": last["train/kl"], "final_C": last.get("train/C"),
           "final_mi": last.get("train/mi")}
    above = [i for i, r in enumerate(rows) if r["train/rec"] >= threshold]
    exit_at = 0 if not above else above[-1] + 1          # below the threshold from here to the end
    if exit_at >= len(rows):
        return out
    at, after = rows[exit_at], [r for r in rows[exit_at:] if "train/C" in r]
    gaps = np.array([r["train/kl"] - r["train/C"] for r in after])
    out.update(exit_step=at["step"], mi_at_exit=at.get("train/mi"), kl_at_exit=at["train/kl"],
               C_at_exit=at.get("train/C"))
    if len(gaps):
        outside = np.flatnonzero(np.abs(gaps) >= tolerance)
        settled = 0 if len(outside) == 0 else outside[-1] + 1
        out.update(max_overshoot_after=float(gaps.max()), max_abs_gap_after=float(np.abs(gaps).max()),
                   settled_step=after[settled]["step"] if settled < len(after) else None)
    return out


def _fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec``; "–" for a missing value. A value that rounds to
    zero prints without a sign: the MI estimate scatters around 0 on the plateau."""
    if value is None:
        return "–"
    text = format(value, spec)
    return format(0.0, spec) if float(text) == 0 else text


def markdown_table(results: list[dict]) -> str:
    """One line per run, grouped by row, with the command that trains it."""
    lines = ["| change | seed | steps | off the plateau from | I(x; z) there | KL / C there | max KL − C after "
             "| \\|KL − C\\| < 1 from | final NLL | final KL / C | final I(x; z) | command |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        exit_step = "never" if r["exit_step"] is None else f"{r['exit_step']:,}"
        settled = "–" if r["exit_step"] is None else ("never" if r["settled_step"] is None else f"{r['settled_step']:,}")
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['steps']:,} | {exit_step} | {_fmt(r['mi_at_exit'], '.2f')} "
            f"| {_fmt(r['kl_at_exit'], '.2f')} / {_fmt(r['C_at_exit'], '.2f')} "
            f"| {_fmt(r['max_overshoot_after'], '.2f')} | {settled} "
            f"| {r['final_rec']:.0f} | {r['final_kl']:.2f} / {_fmt(r['final_C'], '.2f')} "
            f"| {_fmt(r['final_mi'], '.2f')} | `{r['command']}` |")
    return "\n".join(lines)


def figure(histories: dict[str, list[dict]]):
    """One row per run: KL, I(x; z), KL(q(z) ‖ p(z)) and C (left), reconstruction NLL (right).
    ``histories``: label -> logged rows. The nats axis reaches 3 nats, or the largest
    C or KL logged if higher, so that a long run's ramp stays on the axes."""
    from bcvae import latents, viz

    fig = viz._figure(10.0, 2.3 * len(histories))
    axes = fig.subplots(len(histories), 2, squeeze=False, sharex=True)
    for (label, rows), (info, rec) in zip(histories.items(), axes):
        viz.draw_information(info, rows, c_label="C")
        info.set_ylim(-0.2, max([3.0, *(1.05 * r[k] for r in rows for k in ("train/C", "train/kl") if k in r)]))
        info.set_ylabel("nats")
        info.set_title(label, fontsize=9, loc="left")
        rec.plot(*latents.series(rows, "train/rec"), color="tab:green", lw=1.2)
        rec.axhline(PLATEAU_NLL, color="grey", ls=":", lw=1)
        rec.set_ylim(0, 700)
        rec.set_title("reconstruction NLL (nats)", fontsize=9, loc="left")
    axes[0][0].legend(fontsize=7, ncol=4, loc="upper left")
    for ax in axes[-1]:
        viz._step_axis(ax)
    return fig


def main(argv: list[str] | None = None) -> int:
    from bcvae import track
    from bcvae.checkpoint import write_json

    p = ArgumentParser(prog="bcvae plateau", description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated, e.g. 0,1")
    p.add_argument("--steps", type=int, default=8000, help="training steps of every run")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each")
    p.add_argument("--no-train", action="store_true", help="summarise the runs as they are")
    p.add_argument("--keep-rows", action="store_true",
                   help="keep the rows <out>/plateau.json holds for other (row, seed) pairs (their runs may be gone)")
    p.add_argument("--out", default="results")
    p.add_argument("--figure", default="", help="also draw these runs (key:seed,...) into <out>/plateau.png")
    args = p.parse_args(argv)
    keys = [k for k in args.rows.split(",") if k]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        p.error(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    seeds = parse_seeds(args.seeds, p)
    if args.steps < 1 or args.jobs < 1:
        p.error("--steps and --jobs must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path.cwd()
    jobs = [(k, s) for k in keys for s in seeds]
    run_dirs = [run_path(root / "runs", run_name(k, s), 0) for k, s in jobs]
    if not args.no_train:
        threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            run_dirs = list(pool.map(
                lambda j: train_one(EXPERIMENT, j[1], threads=threads, root=root, name=run_name(*j),
                                    overrides=[f"train.max_steps={args.steps}", *QUIET, *ROWS[j[0]][1]]), jobs))
    results = []
    for (key, seed), run_dir in zip(jobs, run_dirs):
        log_file = run_dir / "metrics.jsonl"
        if not log_file.is_file():
            p.error(f"{log_file}: no training log (train it first, without --no-train)")
        summary = exit_summary(track.read_jsonl(log_file))
        results.append({"row": key, "label": ROWS[key][0], "seed": seed, "command": command(key, seed, args.steps),
                        "run_dir": str(run_dir), **summary})
    out = Path(args.out)
    if args.keep_rows:
        results = merge_rows(earlier_rows(out / "plateau.json", p, key="row"), results, list(ROWS), key="row")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "plateau.json", results)
    table = markdown_table(results)
    (out / "plateau.md").write_text(table + "\n")
    print(table)
    if args.figure:
        wanted = [tuple(item.split(":")) for item in args.figure.split(",") if item]
        histories = {f"{ROWS[k][0]}, seed {s}":
                     track.read_jsonl(run_path(root / "runs", run_name(k, int(s)), 0) / "metrics.jsonl")
                     for k, s in wanted}
        figure(histories).savefig(out / "plateau.png", dpi=100)
        print(f"wrote {out / 'plateau.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
