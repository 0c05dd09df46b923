"""Command line: ``bcvae train|cv|eval|data|sweep|plots|reproduce|plateau|tc-bias|shift-forces|decoded-factors|within-factors|factor-costs|adam-steps|encoder-units`` (also ``python -m bcvae``).

Every command shares one error boundary (:func:`main`). Exit codes: 0 success;
2 a user mistake (config, argument, edited run record), one line naming the file,
key or value; 1 an environment or data fault (missing or damaged file, full disk,
non-finite loss), one line naming the path; 128+N when stopped by signal N (a
checkpoint was written); 70 an internal error — a bug: the traceback is printed.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

# Idle OpenMP threads yield instead of spinning (set before torch loads its
# OpenMP runtime): on a shared machine spinning threads steal the cores the
# other process needs (measured 6.4x slower training, benchmarks/README.md).
# Set OMP_WAIT_POLICY=ACTIVE yourself on a dedicated machine if it is faster there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bcvae.errors import ArgumentParser

log = logging.getLogger("bcvae")


# Commands with an argument parser of their own (``bcvae reproduce --help``), routed before the
# main parser reads anything (:func:`_route`); listed in it only so that ``bcvae --help`` names them.
OWN_PARSERS = {
    "reproduce": "train and evaluate the comparison experiments: results/ and the README's tables",
    "plateau": "the mean-image plateau study of the capacity objective",
    "tc-bias": "how β-TCVAE's minibatch estimates of a run's TC depend on the batch size",
    "shift-forces": "the force of each FactorVAE loss term on a shift common to every code",
    "decoded-factors": "which factors a model's reconstructions draw, read back from the picture",
    "within-factors": "what each latent tells apart within the classes of its main factor",
    "factor-costs": "the best reconstruction given each subset of the factors: what a nat of code buys",
    "adam-steps": "how large a step Adam gives each loss term, from a run's checkpoint",
    "encoder-units": "which of the encoder's rectifier units respond to any image",
}


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="bcvae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train (or resume) one fold"), ("cv", "train every fold, then summarise")):
        c = sub.add_parser(name, help=text)
        c.add_argument("experiment", help="name under experiments/ (e.g. capacity25) or a YAML path")
        c.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 seed=2 data.fold=3")
        c.add_argument("--fresh", action="store_true", help="start over (the old run is moved aside)")
    e = sub.add_parser("eval", help="disentanglement metrics of a run or checkpoint")
    e.add_argument("run", help="run directory (runs/<exp>/fold<k>), checkpoint.pt or pretrained/<experiment>")
    e.add_argument("--metrics", default="mig,sap,dci,beta_vae,factor_vae", help="comma-separated")
    e.add_argument("--num-points", type=int, default=10_000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--full-grid-mig", action="store_true", help="also MIG over all 737,280 images")
    e.add_argument("--no-wandb", action="store_true", help="do not log to the run's W&B run")
    d = sub.add_parser("data", help="dataset commands")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="build the HDF5 fold cache")
    b.add_argument("experiment", nargs="?", default="capacity25")
    b.add_argument("overrides", nargs="*")
    dl = dsub.add_parser("download", help="fetch the real dSprites npz")
    dl.add_argument("--dest", default="data")
    cr = dsub.add_parser("compare-renderer", help="count pixels where the renderer differs from a real npz")
    cr.add_argument("path")
    cr.add_argument("--limit", type=int, default=None, help="compare only the first N images")
    s = sub.add_parser("sweep", help="run a W&B sweep file's configurations locally, one after another")
    s.add_argument("sweep", help="name under experiments/sweeps/ or a YAML path")
    s.add_argument("--count", type=int, default=0, help="at most this many runs (random search: required)")
    s.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    pl = sub.add_parser("plots", help="write PNG figures next to a run")
    pl.add_argument("run", help="run directory (runs/<exp>/fold<k>) or pretrained/<experiment>")
    ex = sub.add_parser("export", help="copy a finished, evaluated run's weights into a pretrained directory")
    ex.add_argument("run", help="run directory (runs/<exp>/fold<k>) with eval.json of its final checkpoint")
    ex.add_argument("out", help="pretrained/<experiment>")
    ex.add_argument("--name", help="the model's name in the exported config.yaml (default: the run's), "
                                   "e.g. the experiment's for a run trained under another name")
    for name, text in OWN_PARSERS.items():
        sub.add_parser(name, help=f"{text} (bcvae {name} --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """The error boundary of every command: see the module docstring for the exit codes."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    from bcvae.config import ConfigError
    from bcvae.errors import DatasetError, Interrupted, TrainingError, UsageError

    try:
        return _route(argv)
    except (ConfigError, UsageError) as err:
        prefix = "config error" if isinstance(err, ConfigError) else "error"
        print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"stopped: {err.args[0]}", file=sys.stderr)
        return 128 + int(err.args[1])
    # OSError: the machine's fault (disk full, permissions), not the code's: no traceback either
    except (DatasetError, TrainingError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside training (which checkpoints instead), e.g. a cache build
        print("stopped: interrupted (SIGINT). Run the same command again.", file=sys.stderr)
        return 128 + 2
    except Exception:
        import traceback

        traceback.print_exc()
        print("internal error: this is a bug in bcvae, not a mistake of yours; please report it with the "
              "traceback above and the command you ran", file=sys.stderr)
        return 70


def _one_line(err: BaseException) -> str:
    """The message on one line (an OSError names its file: ``[Errno 28] ...: 'path'``)."""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.strerror or err}: {err.filename}"
    return " ".join(str(err).split())


def _route(argv: list[str]) -> int:
    if argv[:1] and argv[0] in OWN_PARSERS:  # its own argument parser: bcvae reproduce --help
        module = importlib.import_module("bcvae." + argv[0].replace("-", "_"))
        return module.main(argv[1:])
    return _dispatch(_parser().parse_args(argv))


def _dispatch(args) -> int:
    from bcvae import config

    if args.command in ("train", "cv"):
        cfg = config.load(config.experiment_path(args.experiment), args.overrides)  # before torch: typos fail fast
        if args.command == "train":
            from bcvae import train

            train.train(cfg, fresh=args.fresh)
        else:
            from bcvae import crossval

            crossval.cross_validate(cfg, fresh=args.fresh)
        return 0
    if args.command == "eval":
        from bcvae import evaluate

        evaluate.main(args)
        return 0
    if args.command == "data":
        return _data(args)
    if args.command == "sweep":
        from bcvae import sweep

        sweep.run_local(sweep.sweep_path(args.sweep), count=args.count, dry_run=args.dry_run)
        return 0
    if args.command == "plots":
        from bcvae import plots

        for path in plots.write_run_plots(Path(args.run)):
            print(path)
        return 0
    if args.command == "export":
        from bcvae import evaluate

        for path in evaluate.export(Path(args.run), Path(args.out), name=args.name):
            print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")
        return 0
    raise AssertionError(args.command)


def _data(args) -> int:
    from bcvae import config, data

    if args.data_command == "build":
        cfg = config.load(config.experiment_path(args.experiment), args.overrides)
        path = data.ensure_cache(cfg.data)
        print(f"fold cache ready: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    elif args.data_command == "download":
        print(f"downloaded: {data.download_dsprites(Path(args.dest))}")
    elif args.data_command == "compare-renderer":
        report = data.compare_renderer(Path(args.path), limit=args.limit, progress=True)
        per_shape = report.pop("per_shape", {})
        for key, value in report.items():
            print(f"{key:>36}: {value}")
        for shape, counts in per_shape.items():
            print(f"{shape:>36}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
