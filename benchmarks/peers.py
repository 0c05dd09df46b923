"""``make bench-peers``: bcvae measured against the peer library disent (PyPI ``disent==0.8.0``).

One run, variants taking turns, writes ``benchmarks/results/peers.json`` and the
table between the ``peers-table`` markers of ``benchmarks/README.md``:

* training throughput: disent's own loop (its ``BetaVae`` framework under a
  Lightning ``Trainer``, fed by ``DisentDataset`` + ``DataLoader`` as its README
  sets them up) against bcvae's ``Trainer`` step as ``make bench`` times it
  (``training.TrainerSteps``: the fast path, and eager for reference). Same images
  (the training folds of bcvae's 20,000-image procedural subset, in memory), same
  batch (64), same threads (one process), same objective (β-VAE, β = 4, Bernoulli,
  sums over pixels and latents, batch means), same Adam learning rate, and the same
  network: bcvae's Burgess VAE, wrapped in disent's model classes for disent's side
  (``disent_side.py``). img/s per turn, median and spread; GFLOP/s from the FLOPs
  of one training image counted as ``make bench`` counts them.
* metrics: MIG, SAP, DCI and FactorVAE of both libraries on three codes -- an
  untrained encoder, the encoder bcvae's side trained during the race, and a
  known-answer code (:class:`KnownAnswerCode`) -- both looking codes up in one
  shared :class:`bcvae.metrics.CodeSource`, so an image has one code whichever
  library asks. MIG, SAP and DCI also run on identical sampled points, which
  separates estimator differences from sampling noise.

Needs the separate environment ``make bench-peers`` builds (``.venv-peers``);
the default install never has disent. The pure helpers here (known-answer code,
its expected scores, the table) import neither disent nor Lightning, so the
default test suite checks them.

    python benchmarks/peers.py                 # ~5 minutes on a loaded 2-core CPU
    python benchmarks/peers.py --eager --dci-sampling   # also bcvae's eager step, DCI per seed (slower)
    python benchmarks/peers.py --quick --no-readme      # a minute or two: does everything run?
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# As run.py: idle OpenMP threads sleep instead of spinning (set before torch loads its runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bcvae.data import FACTOR_NAMES, FACTOR_SIZES, N_IMAGES  # noqa: E402
from bcvae.metrics import discrete_mutual_info, discretize  # noqa: E402
from timing import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
TABLE_START, TABLE_END = "<!-- peers-table:start -->", "<!-- peers-table:end -->"
SUBSET = 20_000  # as make bench: the training folds of this procedural subset are the images both sides train on
BATCH = 64
BETA, LR = 4.0, 5e-4
ROTATION = 30.0  # degrees between posX/posY and their latents in the entangled synthetic code
VARYING = [i for i, size in enumerate(FACTOR_SIZES) if size > 1]  # shape, scale, orientation, posX, posY
SIZES = {  # points per metric: disent's own "fast" settings where it has them, smaller where time is short
    "mig": 2000, "sap_train": 2000, "sap_test": 1000, "dci_train": 500, "dci_test": 250,
    "fvae_train": 200, "fvae_eval": 100, "fvae_variance": 1000,
}
QUICK_SIZES = {"mig": 300, "sap_train": 300, "sap_test": 150, "dci_train": 200, "dci_test": 100,
               "fvae_train": 20, "fvae_eval": 10, "fvae_variance": 200}  # --quick: checks that it runs, not numbers


# ---------------------------------------------------------------- known-answer code (no disent needed)


class KnownAnswerCode:
    """A perfectly disentangled code: each varying factor's class, scaled to [0, 1], in its own
    latent (shape, scale, orientation, posX, posY in that order), then ``n_noise`` latents of
    N(0, 1) noise that depend on the image only (a fixed draw per image index).

    ``rotation`` (degrees) turns the posX and posY latents in their plane: an entangled code
    whose scores lie between the extremes (no closed form; for comparing estimators).
    ``table()`` gives the codes of all 737,280 images in the real file's order, the form
    :class:`bcvae.metrics.CodeSource` takes; ``code(classes (..., 6))`` computes the same rows.
    """

    def __init__(self, n_noise: int = 5, seed: int = 0, rotation: float = 0.0):
        self.n_noise, self.rotation = int(n_noise), float(rotation)
        self.noise = np.random.default_rng(seed).standard_normal((N_IMAGES, self.n_noise)).astype(np.float32)

    @property
    def dims(self) -> int:
        return len(VARYING) + self.n_noise

    def code(self, classes: np.ndarray) -> np.ndarray:
        """Latent classes ``(..., 6)`` int -> codes ``(..., 5 + n_noise)`` float64."""
        classes = np.asarray(classes, dtype=np.int64)
        flat = classes.reshape(-1, len(FACTOR_SIZES))
        scaled = flat[:, VARYING] / (np.asarray(FACTOR_SIZES)[VARYING] - 1)
        if self.rotation:
            a = math.radians(self.rotation)
            x, y = scaled[:, 3].copy(), scaled[:, 4].copy()
            scaled[:, 3], scaled[:, 4] = math.cos(a) * x - math.sin(a) * y, math.sin(a) * x + math.cos(a) * y
        noise = self.noise[np.ravel_multi_index(flat.T, FACTOR_SIZES)]
        return np.concatenate([scaled, noise], axis=1).reshape(classes.shape[:-1] + (self.dims,))

    def table(self) -> np.ndarray:
        """Codes of every image ``(737280, 5 + n_noise)``, in the real file's (C) order."""
        grid = np.stack(np.unravel_index(np.arange(N_IMAGES), FACTOR_SIZES), axis=1)
        return self.code(grid)


def known_answers(num_bins: int = 20) -> dict:
    """What the metrics give :class:`KnownAnswerCode` on the whole population (infinitely many points).

    * MIG: the noise latents carry no information, so each factor's gap is I(bin(z_k); v_k) / H(v_k)
      = H(bin(v_k)) / log |V_k|, which is 1 for factors with at most ``num_bins`` values and less
      where values share a bin (orientation 40 -> 20 bins: log 20 / log 40 = 0.812).
    * DCI: every factor is read from its own latent: disentanglement = completeness = 1 and
      every class is predicted exactly (informativeness 1).
    * FactorVAE: fixing factor k zeroes the variance of latent k alone: accuracy 1.
    * SAP has no closed form here: a one-dimensional linear one-vs-rest SVM cannot
      single out the middle classes of an ordered factor.
    """
    gaps = {}
    for i in VARYING:
        values = np.arange(FACTOR_SIZES[i], dtype=np.float64) / (FACTOR_SIZES[i] - 1)
        bins = discretize(values[:, None], num_bins)  # each value once: the uniform population
        labels = np.arange(FACTOR_SIZES[i])
        gaps[FACTOR_NAMES[i]] = float(discrete_mutual_info(bins, labels)[0] / math.log(FACTOR_SIZES[i]))
    return {"mig": float(np.mean(list(gaps.values()))), "mig_per_factor": gaps, "dci_disentanglement": 1.0,
            "dci_completeness": 1.0, "dci_informativeness": 1.0, "factor_vae": 1.0, "sap": None}


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements, and the values themselves."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "rounds": [round(v, 4) for v in vals]}


# ---------------------------------------------------------------- the table (no disent needed)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.1e}"


def _range(s: dict, digits: int = 3) -> str:
    """``median (min–max)`` of a :func:`spread`."""
    if len(s["rounds"]) == 1:
        return _fmt(s["median"], digits)
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


METRIC_ROWS = (("mig", "MIG"), ("sap", "SAP"), ("dci_disentanglement", "DCI disentanglement"),
               ("dci_completeness", "DCI completeness"), ("dci_informativeness", "DCI informativeness"),
               ("factor_vae", "FactorVAE"), ("factor_vae_no_pruning", "FactorVAE, no dimension pruned"))


def markdown_table(r: dict) -> str:
    """The README's tables of one result dict (as written to ``peers.json``)."""
    t = r["train"]
    lines = [f"`{r['command']}`, {r['date']}, {r['seconds_total']:.0f} s; {r['device']}; "
             f"{r['threads']} torch threads in one process for both sides; load average "
             f"{r['load_average_start']:.1f} at the start, {r['load_average_end']:.1f} at the end; "
             f"disent {r['disent']}, lightning {r['lightning']}, torch {r['torch']}.", "",
             f"Training, Burgess VAE (bcvae's network on both sides), β-VAE β = {t['beta']:g}, batch {t['batch']}, "
             f"{t['rounds']} interleaved turns of {t['steps']} steps after {t['warmup']} warm-up steps; "
             f"{t['flops_per_image'] / 1e6:.1f} MFLOP per training image:", "",
             "| loop | img/s, median (min–max) | GFLOP/s | ÷ disent's turn before it: median (min–max) |",
             "|---|---:|---:|---:|"]
    theirs = t["img_s"]["disent"]["rounds"]
    for name, label in (("disent", "disent 0.8.0: BetaVae + Lightning Trainer.fit + DisentDataset/DataLoader"),
                        ("bcvae_fast", "bcvae Trainer step, defaults (channels_last, fused Adam)"),
                        ("bcvae_eager", "bcvae Trainer step, eager (contiguous, fused Adam)")):
        if name in t["img_s"]:
            s = t["img_s"][name]
            ratio = spread([a / b for a, b in zip(s["rounds"], theirs)])
            lines.append(f"| {label} | {_range(s, 0)} | {s['median'] * t['flops_per_image'] / 1e9:.1f} | "
                         f"{_range(ratio, 2).replace(' (', '× (') if len(theirs) > 1 else _fmt(ratio['median'], 2)} |")
    lines += ["", f"Metrics (sizes: {r['metrics']['sizes_note']}). *Same points*: both libraries' estimators on "
              "one sample (seed 0); *own sampling*: each library draws its own points, median (min–max) over "
              f"seeds {r['metrics']['seeds']}; seconds exclude rendering and encoding.", "",
              "| code | metric | known answer | bcvae, same points | disent, same points | "
              "bcvae, own sampling | disent, own sampling | s bcvae / disent |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for code, res in r["metrics"]["codes"].items():
        for key, label in METRIC_ROWS:
            row = res["values"].get(key)
            if row is None:
                continue
            same = row.get("same_points", {})
            own = row.get("own_sampling", {})
            secs = row.get("seconds", {})
            lines.append(
                f"| {code} | {label} | {_fmt(row.get('known'))} | {_fmt(same.get('bcvae'))} | "
                f"{_fmt(same.get('disent'))} | {_range(own['bcvae']) if 'bcvae' in own else '–'} | "
                f"{_range(own['disent']) if 'disent' in own else '–'} | "
                f"{_fmt(secs.get('bcvae'), 2)} / {_fmt(secs.get('disent'), 2)} |")
    lines += ["", "Rendering and encoding the images both libraries asked for (one shared cache): " + ", ".join(
        f"{code} {res['images_encoded']:,} images, {res['render_encode_s']:.1f} s"
        for code, res in r["metrics"]["codes"].items() if res["images_encoded"]) + "."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the peers-table markers replaced by ``block``."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{TABLE_START} ... {TABLE_END} markers not found in order")
    return text[:start + len(TABLE_START)] + "\n" + block.strip() + "\n" + text[end:]


def write(result: dict, results_dir: Path = RESULTS, readme: Path | None = README) -> Path:
    """``peers.json`` (and the README table, when ``readme`` is given); returns the JSON path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "peers.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if readme is not None:
        readme.write_text(replace_block(readme.read_text(), markdown_table(result)))
    return path


# ---------------------------------------------------------------- measurements (need .venv-peers)


def train_section(opts, side) -> tuple[dict, object]:
    """The race (see the module docstring); returns its record and bcvae's trained model."""
    import torch

    from bcvae.model import VAE
    from timing import train_flops_per_image
    from training import TrainerSteps, bench_config

    loss = {"objective": "beta", "beta": BETA}
    cache = str(ROOT / "data")
    ours = {"bcvae_fast": TrainerSteps(bench_config("burgess", 10, BATCH, cache, SUBSET, loss=loss, lr=LR))}
    if opts.eager:
        ours["bcvae_eager"] = TrainerSteps(bench_config("burgess", 10, BATCH, cache, SUBSET, loss=loss, lr=LR,
                                                        compile="off", channels_last=False))
    fast = ours["bcvae_fast"].trainer
    images = fast.split.train.images(np.arange(len(fast.split.train)))  # the images bcvae trains on
    torch.manual_seed(0)
    module = side.beta_vae(VAE(10, "burgess"), BETA, LR)
    with tempfile.TemporaryDirectory(prefix="bcvae-peers-") as root:
        race = side.race(module, side.training_loader(images, BATCH), ours, rounds=opts.rounds,
                         steps=opts.steps, warmup=opts.warmup, batch=BATCH, root=root)
    rates = {name: spread(v) for name, v in race["rates"].items()}
    print("  training: " + ", ".join(f"{k} {v['median']:.0f} img/s" for k, v in rates.items()), flush=True)
    record = {"batch": BATCH, "beta": BETA, "lr": LR, "rounds": opts.rounds, "steps": opts.steps,
              "warmup": opts.warmup, "train_images": int(len(images)), "subset": SUBSET,
              "flops_per_image": train_flops_per_image("burgess", 10), "img_s": rates,
              "fast_over_disent": rates["bcvae_fast"]["median"] / rates["disent"]["median"],
              # each bcvae turn runs right after a disent turn: their ratio cancels slow load changes
              "fast_over_disent_per_turn": spread([a / b for a, b in zip(race["rates"]["bcvae_fast"],
                                                                         race["rates"]["disent"])]),
              "first_step_s": race["first_step_s"], "disent_fit_s": race["fit_s"],
              "disent_global_step": race["global_step"], "bcvae_fast_steps": fast.step,
              "network": "bcvae.model.VAE(10, 'burgess') on both sides; disent's side wraps its encoder and "
                         "decoder in disent.model.DisentEncoder/DisentDecoder subclasses under AutoEncoder"}
    return record, fast.model


def _ours_on_points(codes: np.ndarray, factors: np.ndarray, n: dict,
                    names=("mig", "sap", "dci")) -> dict[str, tuple[dict, float]]:
    """bcvae's MIG, SAP and DCI (those in ``names``) on the slices ``disent_side.same_points`` uses."""
    from bcvae import metrics

    calls = {"mig": lambda: {"mig": metrics.mig(codes[:n["mig"]], factors[:n["mig"]])},
             "sap": lambda: {"sap": metrics.sap(codes[:n["sap_train"] + n["sap_test"]],
                                                factors[:n["sap_train"] + n["sap_test"]],
                                                num_train=n["sap_train"], num_test=n["sap_test"])},
             "dci": lambda: metrics.dci(codes[:n["dci_train"] + n["dci_test"]],
                                        factors[:n["dci_train"] + n["dci_test"]],
                                        num_train=n["dci_train"], num_test=n["dci_test"])}
    out = {}
    for name in names:
        tic = time.perf_counter()
        out[name] = (calls[name](), time.perf_counter() - tic)
    return out


def _flat(library: str, name: str, result: dict) -> dict[str, float]:
    """One metric's result dict of either library -> the keys of :data:`METRIC_ROWS`."""
    if name == "dci":
        keys = (("dci.disentanglement", "dci.completeness", "dci.informativeness_test") if library == "disent"
                else ("disentanglement", "completeness", "informativeness"))
        return dict(zip(("dci_disentanglement", "dci_completeness", "dci_informativeness"),
                        (result[k] for k in keys)))
    key = {"mig": "mig.discrete_score", "sap": "sap.score", "factor_vae": "factor_vae.eval_accuracy"}[name]
    return {name: result[key] if library == "disent" else result[name]}


class _Record:
    """Values and seconds of one code's metrics, by row key (:data:`METRIC_ROWS`) and library."""

    def __init__(self):
        self.values: dict[str, dict] = {}
        self.secs: dict[str, dict[str, list]] = {}

    def note(self, library: str, metric: str, kind: str, result: dict, seconds: float) -> None:
        """``kind``: "same_points" (one value) or "own" (one per seed)."""
        for key, v in _flat(library, metric, result).items():
            row = self.values.setdefault(key, {"same_points": {}, "own_sampling": {}})
            if kind == "same_points":
                row["same_points"][library] = v
            else:
                row["own_sampling"].setdefault(library, []).append(v)
        self.secs.setdefault(metric, {}).setdefault(library, []).append(seconds)

    def summary(self, known: dict | None) -> dict:
        """Own-sampling lists as :func:`spread`; the known answer and median seconds of each row."""
        for key, row in self.values.items():
            if "own_sampling" in row:
                row["own_sampling"] = {lib: spread(v) for lib, v in row["own_sampling"].items()}
            if known and key in known and "same_points" in row:
                row["known"] = known[key]
            metric = "dci" if key.startswith("dci_") else key
            if metric in self.secs:
                row["seconds"] = {lib: statistics.median(v) for lib, v in self.secs[metric].items()}
        return self.values


def _own_sampling(rec: _Record, source, seed: int, n: dict, side, dci: bool) -> None:
    """One seed of each library's public metrics drawing their own points, plus bcvae's FactorVAE
    without pruning (disent 0.8.0's setting)."""
    from bcvae import metrics

    sizes = {"mig": {"num_train": n["mig"]}, "sap": {"num_train": n["sap_train"], "num_test": n["sap_test"]},
             "dci": {"num_train": n["dci_train"], "num_test": n["dci_test"]},
             "factor_vae": {"num_train": n["fvae_train"], "num_eval": n["fvae_eval"],
                            "num_variance_estimate": n["fvae_variance"]}}
    own = ("mig", "sap") + (("dci",) if dci else ())
    for metric in own + ("factor_vae",):
        rec.note("disent", metric, "own", *side.sampled(metric, source, seed, sizes[metric]))
    classes = metrics.sample_factors(n["sap_train"] + n["sap_test"], np.random.default_rng(seed))
    for metric, (result, seconds) in _ours_on_points(source(classes), classes[:, VARYING], n, own).items():
        rec.note("bcvae", metric, "own", result, seconds)
    tic, spent = time.perf_counter(), source.seconds
    fv = metrics.factor_vae_details(source, seed, **sizes["factor_vae"])
    rec.note("bcvae", "factor_vae", "own", {"factor_vae": fv["eval_accuracy"]},
             time.perf_counter() - tic - (source.seconds - spent))
    fv0 = metrics.factor_vae_details(source, seed, **sizes["factor_vae"], prune_threshold=0.0)
    rec.values.setdefault("factor_vae_no_pruning", {"own_sampling": {"bcvae": []}})
    rec.values["factor_vae_no_pruning"]["own_sampling"]["bcvae"].append(fv0["eval_accuracy"])
    rec.values.setdefault("factor_vae_active_dims", {"bcvae": [], "note": "bcvae prunes dimensions whose "
                          "std < 0.05 (disentanglement_lib); disent 0.8.0 prunes none (threshold 0)"})
    rec.values["factor_vae_active_dims"]["bcvae"].append(fv["num_active_dims"])


def code_section(name: str, source, opts, side, known: dict | None) -> dict:
    """Both libraries' metrics of one code: same points (seed 0), then own sampling (seeds 1..S)."""
    from bcvae import metrics

    n, rec = opts.sizes, _Record()
    classes = metrics.sample_factors(n["sap_train"] + n["sap_test"], np.random.default_rng(0))
    codes, factors = source(classes), classes[:, VARYING]
    for lib, runs in (("disent", side.same_points(codes, factors, n)), ("bcvae", _ours_on_points(codes, factors, n))):
        for metric, (result, seconds) in runs.items():
            rec.note(lib, metric, "same_points", result, seconds)
    for seed in range(1, opts.seeds + 1):
        _own_sampling(rec, source, seed, n, side, opts.dci_sampling)
    if "factor_vae_no_pruning" in rec.values:  # disent's own values beside bcvae's without pruning
        rec.values["factor_vae_no_pruning"]["own_sampling"]["disent"] = \
            list(rec.values["factor_vae"]["own_sampling"]["disent"])
    values = rec.summary(known)
    print(f"  metrics, {name}: " + ", ".join(
        f"{k} {v['same_points'].get('bcvae', float('nan')):.3f}/{v['same_points'].get('disent', float('nan')):.3f}"
        for k, v in values.items() if v.get("same_points")), flush=True)
    return {"values": values, "render_encode_s": source.seconds, "images_encoded": source.n_encoded}


def metrics_section(opts, side, trained) -> dict:
    """The three codes: untrained encoder, bcvae's side after the race, the known-answer code."""
    import torch

    from bcvae.encode import make_encode
    from bcvae.metrics import CodeSource
    from bcvae.model import VAE

    torch.manual_seed(1)
    untrained = VAE(10, "burgess")
    cpu = torch.device("cpu")
    # compile off: the first compiled call would cost more than these few thousand images save
    sources = {"untrained encoder": (CodeSource(make_encode(untrained, cpu, compile="off")), None),
               "trained encoder": (CodeSource(make_encode(trained, cpu, compile="off")), None),
               "known answer": (CodeSource(codes_table=KnownAnswerCode().table()), known_answers()),
               "rotated code": (CodeSource(codes_table=KnownAnswerCode(rotation=ROTATION).table()), None)}
    codes = {name: code_section(name, source, opts, side, known) for name, (source, known) in sources.items()}
    n = opts.sizes
    return {"sizes": dict(n), "seeds": list(range(1, opts.seeds + 1)),
            "sizes_note": f"MIG {n['mig']} points; SAP {n['sap_train']} train + {n['sap_test']} test; DCI "
                          f"{n['dci_train']} + {n['dci_test']}; FactorVAE {n['fvae_train']} + {n['fvae_eval']} "
                          f"votes of 64 images, variance from {n['fvae_variance']}",
            "codes": codes,
            "untrained": "VAE(10, 'burgess') after torch.manual_seed(1), no training",
            "trained": "bcvae's fast-path model after the race's warm-up + rounds × steps β-VAE steps",
            "known_answer": KnownAnswerCode.__doc__.split("\n\n")[0].replace("\n    ", " "),
            "rotated": f"the known-answer code with its posX and posY latents turned by {ROTATION:g} degrees"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved turns per training variant")
    p.add_argument("--steps", type=int, default=100, help="training steps per turn")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before the turns")
    p.add_argument("--seeds", type=int, default=2, help="own-sampling repetitions of each metric")
    p.add_argument("--eager", action="store_true", help="also time bcvae's eager step (a third variant)")
    p.add_argument("--dci-sampling", action="store_true",
                   help="DCI with each library's own sampling too (slow: disent's exact boosting per seed)")
    p.add_argument("--no-readme", dest="readme", action="store_false", help="do not rewrite the README table")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of peers.json (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a few steps and points: checks that both sides run (numbers meaningless)")
    opts = p.parse_args(argv)
    opts.sizes = dict(QUICK_SIZES if opts.quick else SIZES)
    if opts.quick:
        opts.rounds, opts.steps, opts.warmup, opts.seeds = 1, 4, 2, 1
    import torch

    import disent_side as side

    tic = time.perf_counter()
    r = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": cpu_model(), "threads": torch.get_num_threads(),
         "torch": torch.__version__, "disent": side.VERSION, "lightning": side.L.__version__,
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torchvision_note": side.TORCHVISION_NOTE,
         "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
         "load_average_start": os.getloadavg()[0]}
    print(f"{r['device']}, {r['threads']} threads, disent {r['disent']}\ntraining race ...", flush=True)
    r["train"], trained = train_section(opts, side)
    print("metrics ...", flush=True)
    r["metrics"] = metrics_section(opts, side, trained)
    r["load_average_end"] = os.getloadavg()[0]
    r["seconds_total"] = time.perf_counter() - tic
    path = write(r, opts.results, readme=README if opts.readme else None)
    print("\n" + markdown_table(r) + f"\n\nwrote {path} in {r['seconds_total']:.0f} s")
    return r


if __name__ == "__main__":
    main()
