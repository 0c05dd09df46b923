"""Every plain mistake is one line naming the file, key or value, with exit 2; a damaged
file is one line naming the path, with exit 1; a bug prints its traceback and says so.
Each case drives the real entry point (``python -m bcvae``) and checks nothing was lost."""

from __future__ import annotations

import json

import pytest
import torch

from bcvae import cli
from conftest import ROOT
from test_reliability import (  # noqa: F401  (fixtures)
    SMOKE,
    assert_one_line_error,
    copied_run,
    overrides,
    run,
    run_dir,
    short_run,
    train_cli,
)


@pytest.mark.parametrize("override, words", [
    ("seed=-1", ["seed", "0..4294967295", "-1"]),
    ("seed=4294967296", ["seed", "4294967296"]),
    ("data.fold_seed=-3", ["data.fold_seed"]),
    ("data.subset=800000", ["data.subset", "737,280"]),
    ("data.k=3000", ["data.subset", "2*k"]),
    ("train.batch_size=5000", ["train.batch_size", "training images"]),
    ("name=../../x", ["name", "'../../x'"]),
    ("name=a/b", ["name"]),
    # smoke.yaml trains on 1,800 images: the batch I(x; z) estimate never exceeds log 1800 = 7.50 nats
    ("loss.warm_start_until_mi=8", ["loss.warm_start_until_mi", "log N = 7.50", "1,800"]),
    ("loss.objective=beta loss.warm_start_until_mi=2", ["loss.warm_start_until_mi", "capacity objective only"]),
], ids=["negative-seed", "seed-too-large", "fold-seed", "subset-too-large", "k-above-subset",
        "batch-above-data", "name-escapes-run-dir", "nested-name", "warm-start-mi-unreachable",
        "warm-start-mi-without-capacity"])
def test_config_mistakes_exit_2_before_anything_loads(tmp_path, override, words):
    proc = train_cli(tmp_path, *override.split())
    assert_one_line_error(proc, 2, str(SMOKE), *words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists(), "nothing may be built"


def test_a_huge_batch_is_refused_before_fresh_moves_the_old_run(copied_run):
    before = sorted(p.name for p in (copied_run / "runs" / "smoke").iterdir())
    proc = train_cli(copied_run, "train.batch_size=1000000000", "data.subset=0", "--fresh")
    line = assert_one_line_error(proc, 2, "train.batch_size")
    assert "GiB" in line or "training images" in line
    assert sorted(p.name for p in (copied_run / "runs" / "smoke").iterdir()) == before


def test_memory_check_names_the_need_and_the_machine(tmp_path):
    from bcvae import config

    with pytest.raises(config.ConfigError, match=r"train\.batch_size: 600,000 images need about .* GiB .* "
                                                 r"\(4\.5 MB per image for the original network\), more than this machine.s"):
        config._check_memory(600_000, "original", "x.yaml")
    config._check_memory(576, "original", "x.yaml")  # the original's own batch fits


def test_an_experiment_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("# Réglages\nloss:\n  gamma: 10.0\n".encode("latin-1"))
    proc = run("train", str(bad), *overrides(tmp_path))
    assert_one_line_error(proc, 2, str(bad), "not UTF-8")


@pytest.mark.parametrize("args, words", [
    (["--metrics", "bogus"], ["unknown metric(s) bogus", "choose from"]),
    (["--metrics", ","], ["names no metric"]),
    (["--num-points", "0"], ["--num-points must be >= 100"]),
    (["--metrics", "mig,latent_information"], ["latent_information", "737,280 images", "smoke"]),
], ids=["unknown-metric", "empty-list", "zero-points", "posterior-of-a-subset"])
def test_eval_argument_mistakes_leave_eval_json_alone(copied_run, args, words):
    d = run_dir(copied_run)
    (d / "eval.json").write_text('{"kept": true}')
    proc = run("eval", str(d), *args)
    assert_one_line_error(proc, 2, *words)
    assert json.loads((d / "eval.json").read_text()) == {"kept": True}


def _checkpoint_with(copied_run, change):
    path = run_dir(copied_run) / "checkpoint.pt"
    torch.save(change(torch.load(path, weights_only=True)), path)
    return path


def test_a_checkpoint_whose_config_is_not_a_mapping(copied_run):
    path = _checkpoint_with(copied_run, lambda c: {**c, "config": ["not", "a", "mapping"]})
    assert_one_line_error(run("eval", str(run_dir(copied_run)), "--metrics", "mig"), 1, str(path), "not a mapping")


def test_random_bytes_are_refused_without_advising_the_unsafe_load(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 20)
    line = assert_one_line_error(run("eval", str(path)), 1, str(path), "not a torch file")
    assert "weights_only" not in line


def test_plots_of_a_run_whose_only_history_is_a_torn_wandb_file(copied_run):
    d = run_dir(copied_run)
    (d / "metrics.jsonl").unlink()
    wandb_file = next(d.glob("wandb/offline-run-*/run-*.wandb"))
    data = wandb_file.read_bytes()
    wandb_file.write_bytes(data[: len(data) - 500])
    proc = run("plots", str(d))
    assert proc.returncode == 0, proc.stderr
    assert "torn record" in proc.stderr and "Traceback" not in proc.stderr
    wandb_file.write_bytes(b"garbage" * 100)
    assert_one_line_error(run("plots", str(d)), 1, str(wandb_file), "not a W&B run file")


def _sweep(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


GRID = ("method: grid\ncommand: [python, -m, bcvae, train, {exp}, '${{args_no_hyphens}}']\n"
        "parameters:\n  {params}\n")


@pytest.mark.parametrize("params, words", [
    ("train.lr: {values: [1.0e-4, -1.0]}", ["run 2/2", "train.lr=-1.0", "train.lr", "must be > 0"]),
    ("loss.gamma: {values: [10, [1, 2]]}", ["run 2/2", "loss.gamma"]),
], ids=["second-point-bad-lr", "second-point-not-a-number"])
def test_every_sweep_point_is_validated_before_the_first_trains(tmp_path, params, words):
    path = _sweep(tmp_path, GRID.format(exp=SMOKE, params=params))
    proc = run("sweep", str(path), env=None)
    assert_one_line_error(proc, 2, str(path), *words)
    assert not (ROOT / "runs" / "smoke-s-lr0.0001").exists()


@pytest.mark.parametrize("text, words", [
    ("method: grid\nparameters: [unclosed\n", ["not valid YAML", "line"]),
    ("method: random\ncommand: [train, x]\nparameters:\n  train.lr: {min: 0.1, max: 0.01}\n", ["min 0.1 is larger than max 0.01"]),
    ("method: random\ncommand: [train, x]\nparameters:\n  train.lr: {distribution: log_uniform_values, min: 0, max: 0.1}\n",
     ["needs min > 0"]),
], ids=["yaml-error", "min-above-max", "log-uniform-zero"])
def test_sweep_file_mistakes(tmp_path, text, words):
    path = _sweep(tmp_path, text)
    assert_one_line_error(run("sweep", str(path), "--count", "2"), 2, str(path), *words)


def test_sweep_values_never_nest_run_directories():
    from bcvae.sweep import run_name

    assert run_name("capacity25", "g", {"model.arch": "../a/b", "loss.gamma": 10.0}) == \
        "capacity25-g-arch.._a_b-gamma10.0"


def test_a_genuine_bug_prints_its_traceback_and_says_so(monkeypatch, capsys):
    def broken(argv):
        return 1 // 0

    monkeypatch.setattr(cli, "_route", broken)
    assert cli.main(["train", "smoke"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("internal error: this is a bug in bcvae")


def test_a_full_disk_while_logging_names_the_file(tmp_path, capsys):
    # /dev/full behind the log's name: every append fails with ENOSPC (the trainer never reads
    # it back within this test: reading /dev/full never ends).
    from bcvae.track import Tracker

    tracker = Tracker(tmp_path, {}, name="x", group=None, mode="disabled")
    tracker.jsonl_path.symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        tracker.log({"train/loss": 1.0}, step=1)
    assert err.value.errno == 28 and str(tracker.jsonl_path) in str(err.value)

    def full(argv):
        raise err.value

    import unittest.mock

    with unittest.mock.patch.object(cli, "_route", full):
        assert cli.main(["train", "smoke"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device while appending to" in line and line.endswith(str(tracker.jsonl_path))


def test_eval_says_what_it_is_doing(copied_run):
    proc = run("eval", str(run_dir(copied_run)), "--metrics", "mig,sap", "--num-points", "500", "--no-wandb")
    assert proc.returncode == 0, proc.stderr
    for stage in ("sampling 500 + 250 points", "metric mig done in", "metric sap done in"):
        assert stage in proc.stderr, proc.stderr


def test_help_names_every_command_and_each_own_parser_answers_its_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    listed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in cli.OWN_PARSERS:
        assert f"bcvae {name} --help" in listed, name
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: bcvae {name} "), name  # its own parser, not the stub
