"""Sweep files: valid W&B sweep YAML, expanded locally into real configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bcvae import sweep
from bcvae.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


def test_sweeps_cover_the_required_parameters():
    keys = set()
    for path in SWEEPS:
        keys |= set(sweep.load_sweep(path)["parameters"])
    assert {"loss.beta", "loss.gamma", "loss.c_max", "loss.factor_gamma"} <= keys


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_expands_into_loadable_configs(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = sweep.load_sweep(path)
    runs = sweep.run_local(path, dry_run=True)
    sizes = [len(p["values"]) for p in spec["parameters"].values()]
    assert len(runs) == int(__import__("math").prod(sizes))
    assert len({r["name"] for r in runs}) == len(runs)
    assert "${args_no_hyphens}" in spec["command"]


def test_grid_expansion_is_the_cartesian_product():
    spec = {"method": "grid", "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]},
                                             "c": {"value": 0}}}
    runs = sweep.expand(spec)
    assert len(runs) == 6 and {(r["a"], r["b"]) for r in runs} == {(a, b) for a in (1, 2) for b in "xyz"}
    assert all(r["c"] == 0 for r in runs)


def test_random_search_needs_count_and_respects_ranges():
    spec = {"method": "random", "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
                                               "k": {"distribution": "int_uniform", "min": 1, "max": 3}}}
    with pytest.raises(ConfigError, match="--count"):
        sweep.expand(spec)
    runs = sweep.expand(spec, count=50)
    assert all(1e-5 <= r["lr"] <= 1e-3 and r["k"] in (1, 2, 3) for r in runs)
    assert sweep.expand(spec, count=5) == sweep.expand(spec, count=5)


@pytest.mark.parametrize("spec,match", [
    ({"method": "grid", "parameters": {"a": {"values": [1]}}, "bogus": 1}, "unknown sweep key"),
    ({"method": "hyperband", "parameters": {"a": {"values": [1]}}}, "method"),
    ({"method": "grid", "parameters": {}}, "parameters"),
    ({"method": "grid", "parameters": {"a": {"min": 0.0, "max": 1.0}}}, "grid search needs"),
    ({"method": "random", "parameters": {"a": {"distribution": "gamma", "min": 0, "max": 1}}}, "distribution"),
    ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "needs a metric"),
    ({"method": "grid", "parameters": {"a": {"values": []}}}, "non-empty"),
])
def test_invalid_sweeps_are_rejected(spec, match):
    with pytest.raises(ConfigError, match=match):
        sweep.validate_sweep(spec, "s.yaml")


def test_sweep_with_unknown_config_key_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": {"loss.gama": {"values": [1.0]}},
                                    "command": ["python", "-m", "bcvae", "train", "smoke", "${args_no_hyphens}"]}))
    with pytest.raises(ConfigError, match="did you mean 'loss.gamma'"):
        sweep.run_local(path, dry_run=True)
