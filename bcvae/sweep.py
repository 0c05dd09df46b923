"""W&B sweep files, run online by ``wandb agent`` or offline one run after another.

A sweep file is standard W&B sweep YAML: ``wandb sweep experiments/sweeps/<name>.yaml``
then ``wandb agent <id>`` on as many machines as you like. Its ``command``
calls ``python -m bcvae train <experiment> ${args_no_hyphens}``, so every agent
runs the same entry point with ``key=value`` overrides. Offline,
:func:`run_local` validates the file, expands its grid (or draws ``--count``
random configurations) and trains them in turn.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from pathlib import Path

import numpy as np

from bcvae.config import RUN_NAME_CHARS, ConfigError, read_yaml

log = logging.getLogger("bcvae")

SWEEPS = Path("experiments/sweeps")
TOP_LEVEL = {"program", "method", "metric", "parameters", "command", "name", "description",
             "early_terminate", "run_cap", "project", "entity"}
METHODS = {"grid", "random", "bayes"}
DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                 "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "inv_log_uniform_values"}
PARAM_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "parameters"}


def sweep_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") or path.is_file() else SWEEPS / f"{name}.yaml"


def load_sweep(path: Path) -> dict:
    """Read and validate a sweep file against the W&B sweep configuration schema."""
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    spec = read_yaml(path)
    validate_sweep(spec, str(path))
    return spec


def validate_sweep(spec, source: str) -> None:
    """The checks W&B's server applies to a sweep config, with messages naming the key."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: a sweep file is a mapping")
    unknown = set(spec) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"{source}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    if spec.get("method") not in METHODS:
        raise ConfigError(f"{source}: method must be one of {sorted(METHODS)}, got {spec.get('method')!r}")
    metric = spec.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric
                               or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise ConfigError(f"{source}: metric needs a name and goal minimize|maximize")
    if spec["method"] == "bayes" and metric is None:
        raise ConfigError(f"{source}: method bayes needs a metric")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: parameters must be a non-empty mapping")
    for name, p in params.items():
        _validate_param(p, f"{source}: parameters.{name}", spec["method"])


def _validate_param(p, where: str, method: str) -> None:
    if not isinstance(p, dict) or not p:
        raise ConfigError(f"{where}: must be a mapping such as {{values: [...]}} or {{value: x}}")
    unknown = set(p) - PARAM_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
        raise ConfigError(f"{where}: values must be a non-empty list")
    dist = p.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {dist!r}")
    if not ({"value", "values", "parameters"} & set(p)) and ("min" not in p or "max" not in p):
        raise ConfigError(f"{where}: give value, values, or a distribution with min and max")
    if method == "grid" and not ({"value", "values", "parameters"} & set(p)):
        raise ConfigError(f"{where}: grid search needs value or values (not a continuous distribution)")
    if "min" in p and "max" in p:
        lo, hi = p["min"], p["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise ConfigError(f"{where}: min and max must be numbers, got {lo!r} and {hi!r}")
        if lo > hi:
            raise ConfigError(f"{where}: min {lo} is larger than max {hi}")
        if dist in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and lo <= 0:
            raise ConfigError(f"{where}: {dist} needs min > 0 (values are drawn uniformly in log space), got {lo}")


def experiment_of(spec: dict, source: str) -> str:
    """The experiment name the sweep's command trains (the word after ``train``)."""
    command = spec.get("command") or []
    if "train" in command and command.index("train") + 1 < len(command):
        return str(command[command.index("train") + 1])
    raise ConfigError(f"{source}: command must contain 'train <experiment>'")


def expand(spec: dict, count: int = 0, seed: int = 0) -> list[dict[str, object]]:
    """Concrete ``{key: value}`` runs: the full grid, or ``count`` random draws."""
    params = _flat_params(spec["parameters"])
    if spec["method"] == "grid":
        keys = list(params)
        grids = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
        runs = [dict(zip(keys, combo)) for combo in itertools.product(*grids)]
        return runs[:count] if count else runs
    if count < 1:
        raise ConfigError(f"method {spec['method']} runs offline as random search: give --count N")
    rng = np.random.default_rng(seed)
    return [{k: _draw(p, rng) for k, p in params.items()} for _ in range(count)]


def _flat_params(params: dict, prefix: str = "") -> dict:
    out = {}
    for name, p in params.items():
        if "parameters" in p:
            out.update(_flat_params(p["parameters"], f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = p
    return out


def _draw(p: dict, rng: np.random.Generator):
    if "value" in p:
        return p["value"]
    if "values" in p:
        probs = p.get("probabilities")
        return p["values"][rng.choice(len(p["values"]), p=probs)]
    lo, hi, dist = p["min"], p["max"], p.get("distribution", "uniform")
    if dist == "int_uniform" or (isinstance(lo, int) and isinstance(hi, int) and "distribution" not in p):
        return int(rng.integers(lo, hi + 1))
    if dist in ("log_uniform_values", "q_log_uniform_values"):
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def run_local(path: Path, count: int = 0, dry_run: bool = False) -> list[dict]:
    """Train every configuration of a sweep file locally, one after another."""
    from bcvae import config, train  # train imports torch: loaded only when a sweep runs

    spec = load_sweep(path)
    exp = experiment_of(spec, str(path))
    runs = expand(spec, count)
    # Every point is checked before the first trains: a bad value in point 5 is found now, not hours later.
    configs = []
    for i, params in enumerate(runs):
        overrides = [f"{k}={v}" for k, v in params.items()]
        try:
            cfg = config.load(config.experiment_path(exp), overrides + [f"name={run_name(exp, path.stem, params)}"])
        except ConfigError as err:
            raise ConfigError(f"{path}: run {i + 1}/{len(runs)} ({' '.join(overrides)}): {err}") from None
        configs.append((params, overrides, cfg))
    summaries = []
    for i, (params, overrides, cfg) in enumerate(configs):
        log.info("sweep %s run %d/%d: %s", path.stem, i + 1, len(runs), " ".join(overrides))
        if not dry_run:
            summaries.append({"params": params, "summary": train.train(cfg, group=f"sweep-{path.stem}")})
        else:
            summaries.append({"params": params, "name": cfg.name})
    return summaries


def run_name(exp: str, sweep: str, params: dict) -> str:
    """``<experiment>-<sweep>-<key><value>...``, every character outside ``[A-Za-z0-9_.,=+-]``
    replaced by ``_``: a value such as ``a/b`` never makes a nested run directory."""
    tag = "-".join(f"{k.split('.')[-1]}{v}" for k, v in params.items())
    return re.sub(f"[^{RUN_NAME_CHARS}]", "_", f"{exp}-{sweep}-{tag}")
