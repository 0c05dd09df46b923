"""``make bench``: training / encoding throughput, metric times and memory of this machine.

Prints a table and writes ``benchmarks/results/latest.json`` plus a dated copy.
Every comparison is measured in one run, its variants taking turns (see
``timing.py``), so ratios hold even on a shared machine. Achieved GFLOP/s are
reported against a float32 matmul measured in the same run, this machine's
practical peak.

    python benchmarks/run.py            # everything, < 10 minutes on a 2-core CPU
    python benchmarks/run.py --quick    # the headline numbers in about a minute
    python benchmarks/run.py --full-rss # also build the full-dataset cache if missing (~2 min once)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other work,
# spinning threads of a 2-thread step wait for a descheduled partner at every
# kernel and training collapses (measured 10×, see the "openmp" section). It must
# be set before torch loads its OpenMP runtime; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import cpu_model, first_call_seconds, interleaved, matmul_gflops, median_seconds, train_flops_per_image  # noqa: E402
from bcvae.data import load_split  # noqa: E402
from training import PublicBaseline, TrainerSteps, VariantStep, bench_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUBSET = 20_000  # images in the timing split: the per-batch cost does not depend on N, the cache builds in seconds
BASELINE_IMAGES = 20_000  # the baseline's float32 copy: 20,000 × 16 KiB = 312 MiB (the full set would be 11 GiB)


def device_name() -> str:
    """CPU model and core count (or the CUDA device), torch version and thread count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def train_section(name: str, arch: str, z_dim: int, batch: int, opts,
                  baseline: bool = False) -> tuple[dict, dict]:
    """Eager vs fast path (and optionally the public-style baseline) of one model and batch size."""
    cache = str(ROOT / "data")
    steps = {"eager": TrainerSteps(bench_config(arch, z_dim, batch, cache, SUBSET, compile="off", channels_last=False)),
             "fast": TrainerSteps(bench_config(arch, z_dim, batch, cache, SUBSET))}
    if baseline:
        trainer = steps["fast"].trainer
        images = trainer.split.train.images(np.arange(min(BASELINE_IMAGES, len(trainer.split.train))))
        baseline_step = PublicBaseline(images, batch, trainer.cfg.loss, arch, z_dim, trainer.device)
        steps = {"baseline": baseline_step, **steps}
    first = {k: first_call_seconds(v) for k, v in steps.items()}
    rounds = opts.rounds if batch < 512 else max(2, opts.rounds - 2)  # a step of the original model takes seconds
    rates = interleaved(steps, rounds, opts.seconds)
    out = {"batch": batch, "arch": arch, "z_dim": z_dim, "first_step_s": first,
           "fast_compiled": steps["fast"].compiled, **rates,
           "fast_over_eager": rates["fast"]["median"] / rates["eager"]["median"]}
    if baseline:
        out["fast_over_baseline"] = rates["fast"]["median"] / rates["baseline"]["median"]
    print(f"  {name}: " + ", ".join(f"{k} {v['median']:.0f} img/s" for k, v in rates.items()), flush=True)
    return out, steps


def data_section(rates: dict, steps: dict, repeats: int) -> dict:
    """Time to produce one batch as a fraction of the step it feeds: the trainer's vs the baseline's."""
    t, baseline = steps["fast"].trainer, steps["baseline"]
    batch = t.cfg.train.batch_size
    rng = np.random.default_rng(0)

    def packed_batch():
        idx = rng.integers(0, len(t.split.train), batch)
        return t.split.train.batch(idx, t.device).contiguous(memory_format=t.memory_format)

    ours, theirs = median_seconds(packed_batch, repeats), median_seconds(baseline.next_batch, repeats)
    return {"batch": batch, "seconds_per_batch_packed": ours, "seconds_per_batch_baseline_loader": theirs,
            "fraction_fast": ours * rates["fast"]["median"] / batch,
            "fraction_baseline": theirs * rates["baseline"]["median"] / batch}


def variants_section(opts) -> dict:
    """One setting at a time on the Burgess model, batch 64 (same data, same loss)."""
    cfg = bench_config("burgess", 10, 64, str(ROOT / "data"), SUBSET)
    data, threads = load_split(cfg.data).train, torch.get_num_threads()
    settings = {
        "eager": dict(channels_last=False, compile=False, fused=False, threads=threads),
        "channels_last": dict(channels_last=True, compile=False, fused=False, threads=threads),
        "channels_last+fused_adam": dict(channels_last=True, compile=False, fused=True, threads=threads),
        "channels_last+fused_adam+compile": dict(channels_last=True, compile=True, fused=True, threads=threads),
        "channels_last+fused_adam 1 thread": dict(channels_last=True, compile=False, fused=True, threads=1),
        # opt-in (train.amp=bf16): bf16 convolutions, so not equal to float32 within float32 tolerance.
        # One thread: with two (after other variants changed the thread count) oneDNN's bf16 path
        # was measured 30× slower here, and alone no faster than float32.
        "channels_last+fused_adam+bf16 autocast 1 thread": dict(channels_last=True, compile=False, fused=True,
                                                                threads=1, bf16=True),
    }
    steps = {k: VariantStep(data, 64, cfg.loss, **v) for k, v in settings.items()}
    first = {k: first_call_seconds(v) for k, v in steps.items()}
    rates = interleaved(steps, opts.rounds, opts.seconds)
    torch.set_num_threads(threads)
    print("  variants: " + ", ".join(f"{k} {v['median']:.0f}" for k, v in rates.items()), flush=True)
    return {"first_step_s": first, **rates}


def ddp_section(fast: TrainerSteps, opts) -> dict:
    """Two single-threaded DDP processes vs this one process (all threads), Burgess batch 64;
    float32, then with bf16 autocast (the opt-in ``train.amp=bf16``).

    Not interleaved (other processes): the single-process rate is measured right
    before and right after, and ratios use their mean.
    """
    before = interleaved({"one": fast}, 2, opts.seconds)["one"]["median"]
    result = {amp: _torchrun_ddp(amp, opts) for amp in ("auto", "bf16")}
    after = interleaved({"one": fast}, 2, opts.seconds)["one"]["median"]
    single = (before + after) / 2
    out = {"float32": result["auto"], "bf16": result["bf16"], "single_process": {"before": before, "after": after}}
    for key in ("float32", "bf16"):
        if "median" in out[key]:
            out[key]["over_single_process"] = out[key]["median"] / single
    print("  ddp 2×1 thread: " + ", ".join(f"{k} {v.get('median', float('nan')):.0f} img/s" for k, v in
                                           result.items()) + f" vs one process {single:.0f}", flush=True)
    return out


def _torchrun_ddp(amp: str, opts) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "benchmarks" / "worker.py"), "ddp", "--batch", "64", "--rounds", str(opts.rounds),
           "--steps", "30", "--cache-dir", str(ROOT / "data"), "--subset", str(SUBSET), "--amp", amp]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def openmp_section(opts) -> dict:
    """The fast Burgess step (batch 64) in fresh processes: OpenMP's default wait policy vs PASSIVE.

    Runs alternate (default, passive, default, passive) so that both see the same load.
    """
    rates: dict[str, list[float]] = {"default": [], "PASSIVE": []}
    for policy in ("default", "PASSIVE") * 2:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy == "PASSIVE":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "worker.py"), "step", "--rounds", "2",
               "--seconds", str(opts.seconds), "--cache-dir", str(ROOT / "data"), "--subset", str(SUBSET)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        rates[policy].append(json.loads(proc.stdout.strip().splitlines()[-1])["median"])
    out = {k: {"median": float(np.median(v)), "runs": v} for k, v in rates.items()}
    out["passive_over_default"] = out["PASSIVE"]["median"] / out["default"]["median"]
    print(f"  OpenMP wait policy: default {out['default']['median']:.0f} img/s, "
          f"PASSIVE {out['PASSIVE']['median']:.0f} img/s", flush=True)
    return out


def encode_section(images: np.ndarray, opts) -> dict:
    """Encoding for the metrics (inference mode, batch 1024): contiguous eager, channels_last, compiled."""
    from bcvae.encode import make_encode
    from bcvae.model import VAE
    from bcvae.train import pick_device

    torch.manual_seed(0)
    plain = VAE(10, "burgess")
    fast = VAE(10, "burgess").to(memory_format=torch.channels_last)
    fast.load_state_dict(plain.state_dict())
    device = pick_device("auto")
    plain, fast = plain.to(device), fast.to(device)
    encoders = {"eager": make_encode(plain, device, 1024, channels_last=False, compile="off"),
                "channels_last": make_encode(fast, device, 1024, channels_last=True, compile="off"),
                "channels_last+compile": make_encode(fast, device, 1024, channels_last=True, compile="on")}
    steps = {k: (lambda e=e: len(e(images))) for k, e in encoders.items()}
    first = {k: first_call_seconds(step) for k, step in steps.items()}
    rates = interleaved(steps, opts.rounds, opts.seconds)
    print("  encode: " + ", ".join(f"{k} {v['median']:.0f} img/s" for k, v in rates.items()), flush=True)
    return {"images_per_call": len(images), "batch": 1024, "first_call_s": first, **rates,
            "compiled_over_eager": rates["channels_last+compile"]["median"] / rates["eager"]["median"]}


def metrics_section(opts) -> dict:
    """Seconds per disentanglement metric (untrained encoder: the cost does not depend on the weights)."""
    try:
        from bcvae.metrics import evaluate
    except ImportError as err:
        return {"error": f"bcvae.metrics unavailable ({err})"}
    from bcvae.encode import make_encode
    from bcvae.model import VAE
    from bcvae.train import pick_device

    torch.manual_seed(0)
    model = VAE(10, "burgess").to(memory_format=torch.channels_last)
    names = ("mig", "sap") if opts.quick else ("mig", "sap", "dci", "beta_vae", "factor_vae")
    num_points = 1000 if opts.quick else 2000
    device = pick_device("auto")
    result = evaluate(make_encode(model.to(device), device), metrics=names, seed=0, num_points=num_points)
    seconds = {k: round(v, 2) for k, v in result["seconds"].items()}
    print(f"  metrics (num_points={num_points}): {seconds}", flush=True)
    return {"num_points": num_points, "metrics": list(names), "seconds": seconds,
            "images_encoded": result["settings"].get("images_encoded")}


def rss_section(opts) -> dict:
    """Peak RSS of a process that loads the full procedural split and trains a few steps."""
    from bcvae.config import DataConfig
    from bcvae.data import cache_path

    cache = cache_path(DataConfig(source="procedural", cache_dir=str(ROOT / "data")))
    if not cache.exists() and not opts.full_rss:
        return {"skipped": f"{cache} not built; run with --full-rss (builds it once, ~2 minutes)"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "worker.py"), "rss", "--steps", "20",
           "--cache-dir", str(ROOT / "data")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  full-dataset training: peak RSS {result['rss_mb']:.0f} MiB", flush=True)
    return result


def headline(r: dict) -> dict:
    """The keys every run writes, so runs can be compared over time."""
    b64, flops = r["train"]["burgess_b64"], r["flops_per_image"]["burgess"]
    fast = b64["fast"]["median"]
    return {
        "device": r["device"],
        "train_img_s_fast": fast,
        "train_img_s_eager": b64["eager"]["median"],
        "train_img_s_baseline": b64["baseline"]["median"],
        "fast_over_baseline": b64["fast_over_baseline"],
        "matmul_gflops": r["matmul_gflops"],
        "train_gflops_fast": fast * flops / 1e9,
        "train_peak_fraction_fast": fast * flops / 1e9 / r["matmul_gflops"],
        "data_fraction": r["data"]["fraction_fast"],
        "encode_img_s": r["encode"]["channels_last+compile"]["median"],  # what a large evaluation runs
        "train_rss_mb": r["rss"].get("rss_mb"),
        "best_b64": best_b64(r),
    }


def best_b64(r: dict) -> dict:
    """The fastest Burgess batch-64 setting measured anywhere in this run, against the baseline.

    Settings outside the first section were timed in other turns than the baseline:
    their ratio is less exact than ``fast_over_baseline``.
    """
    b64 = r["train"]["burgess_b64"]
    found = {"fast path (defaults)": b64["fast"]["median"]}
    found.update({f"variant {k}": v["median"] for k, v in r.get("variants", {}).items()
                  if isinstance(v, dict) and "median" in v})
    found.update({f"torchrun 2×1 thread, {k}": v["median"] for k, v in r.get("ddp", {}).items()
                  if isinstance(v, dict) and "median" in v})
    name = max(found, key=found.get)
    return {"setting": name, "img_s": found[name], "over_baseline": found[name] / b64["baseline"]["median"]}


def table(r: dict) -> str:
    """The human-readable summary printed at the end."""
    peak = r["matmul_gflops"]
    lines = [f"device: {r['device']}, OMP_WAIT_POLICY={r['omp_wait_policy']}",
             f"matmul float32 4096²: {peak:.0f} GFLOP/s (practical peak, this run)",
             f"load average: {r['load_average_start']:.1f} at start, {r['load_average_end']:.1f} at end", "",
             f"{'training':<28}{'img/s':>9}{'GFLOP/s':>9}{'% peak':>8}{'first step s':>14}"]
    for key, sec in r["train"].items():
        flops = r["flops_per_image"][sec["arch"]]
        for variant in ("baseline", "eager", "fast"):
            if variant in sec:
                rate = sec[variant]["median"]
                lines.append(f"{key + ' ' + variant:<28}{rate:>9.0f}{rate * flops / 1e9:>9.1f}"
                             f"{100 * rate * flops / 1e9 / peak:>7.0f}%{sec['first_step_s'][variant]:>14.1f}")
        ratios = f"fast/eager {sec['fast_over_eager']:.2f}×"
        if "fast_over_baseline" in sec:
            ratios += f", fast/baseline {sec['fast_over_baseline']:.2f}×"
        lines.append(f"{'':<4}{ratios}{' (fast path compiled)' if sec['fast_compiled'] else ''}")
    for name, sec in r.get("variants", {}).items():
        if isinstance(sec, dict) and "median" in sec:
            lines.append(f"  variant {name:<40}{sec['median']:>7.0f} img/s")
    if "passive_over_default" in r.get("openmp", {}):
        o = r["openmp"]
        lines.append(f"  OpenMP wait policy (fresh processes): default {o['default']['median']:.0f} img/s, "
                     f"PASSIVE {o['PASSIVE']['median']:.0f} img/s ({o['passive_over_default']:.2f}×)")
    for amp, sec in r.get("ddp", {}).items():
        if "median" in sec:
            lines.append(f"  DDP 2 processes × 1 thread, {amp}: {sec['median']:.0f} img/s "
                         f"({sec['over_single_process']:.2f}× one fast process)")
    d = r["data"]
    lines += ["", f"data per batch: {1e3 * d['seconds_per_batch_packed']:.2f} ms packed "
              f"({100 * d['fraction_fast']:.1f}% of a fast step), {1e3 * d['seconds_per_batch_baseline_loader']:.2f} "
              f"ms DataLoader ({100 * d['fraction_baseline']:.1f}% of a baseline step)"]
    enc = r["encode"]
    lines.append("encode (inference mode, batch 1024): " + ", ".join(
        f"{k} {v['median']:.0f} img/s" for k, v in enc.items() if isinstance(v, dict) and "median" in v))
    lines.append(f"metrics seconds: {r['metrics'].get('seconds', r['metrics'])}")
    best = r["best_b64"]
    lines.append(f"fastest Burgess batch-64 setting: {best['setting']}, {best['img_s']:.0f} img/s "
                 f"({best['over_baseline']:.2f}× baseline)")
    rss = r["rss"]
    lines.append(f"full-dataset training peak RSS: {rss['rss_mb']:.0f} MiB" if "rss_mb" in rss else f"RSS: {rss}")
    return "\n".join(lines)


def write(result: dict) -> tuple[Path, Path]:
    """``latest.json`` (``latest-quick.json`` for --quick, so it never replaces a full run) + a dated copy."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=float) + "\n"
    dated = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if result['quick'] else ''}.json"
    latest = RESULTS / ("latest-quick.json" if result["quick"] else "latest.json")
    dated.write_text(text)
    latest.write_text(text)
    return latest, dated


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="headline numbers only, about a minute")
    p.add_argument("--full-rss", action="store_true", help="build the full-dataset cache if missing, for the RSS")
    p.add_argument("--rounds", type=int, default=None, help="turns per variant (default 5, quick 2)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per turn (default 1.5, quick 0.5)")
    opts = p.parse_args(argv)
    opts.rounds = opts.rounds or (2 if opts.quick else 5)
    opts.seconds = opts.seconds or (0.5 if opts.quick else 1.5)
    tic = time.perf_counter()
    result = run(opts)
    result["seconds_total"] = time.perf_counter() - tic
    latest, dated = write(result)
    print("\n" + table(result))
    print(f"\nwrote {latest} and {dated.name} in {result['seconds_total']:.0f} s")


def run(opts) -> dict:
    """Every section in turn; returns the result dict written to JSON."""
    r = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_name(), "torch": torch.__version__,
         "load_average_start": os.getloadavg()[0], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "quick": opts.quick,
         "rounds": opts.rounds, "seconds_per_turn": opts.seconds, "timing_subset": SUBSET,
         "baseline_note": f"baseline: {BASELINE_IMAGES} images as one float32 tensor (the whole dataset would "
                          "take 11 GiB), DataLoader(shuffle=True, default collation, num_workers=0), "
                          "eager, contiguous, torch.optim.Adam defaults"}
    print(f"{r['device']}\nmatmul peak ...", flush=True)
    peaks = [matmul_gflops()]  # sampled between sections too: the best is the practical peak
    r["flops_per_image"] = {"burgess": train_flops_per_image("burgess", 10),
                            "original": train_flops_per_image("original", 6)}
    print("training (Burgess, batch 64) ...", flush=True)
    b64, steps = train_section("burgess_b64", "burgess", 10, 64, opts, baseline=True)
    r["train"] = {"burgess_b64": b64}
    r["data"] = data_section(b64, steps, repeats=50 if opts.quick else 200)
    peaks.append(matmul_gflops(repeats=3))
    if not opts.quick:
        r["ddp"] = ddp_section(steps["fast"], opts)
    del steps
    if not opts.quick:
        r["train"]["burgess_b256"] = train_section("burgess_b256", "burgess", 10, 256, opts)[0]
        r["train"]["original_b576"] = train_section("original_b576", "original", 6, 576, opts)[0]
        peaks.append(matmul_gflops(repeats=3))
        r["variants"] = variants_section(opts)
        r["openmp"] = openmp_section(opts)
    images = load_split(bench_config("burgess", 10, 64, str(ROOT / "data"), SUBSET).data).train
    r["encode"] = encode_section(images.images(np.arange(2048 if opts.quick else 4096)), opts)
    peaks.append(matmul_gflops(repeats=3))
    r["metrics"] = metrics_section(opts)
    r["rss"] = rss_section(opts)
    peaks.append(matmul_gflops())
    r["load_average_end"] = os.getloadavg()[0]  # other work on the machine: > cores means contention
    r["matmul_gflops_runs"] = peaks
    r["matmul_gflops"] = max(peaks)
    return {**headline(r), **r}


if __name__ == "__main__":
    main()
