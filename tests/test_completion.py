"""A run is complete when its final summary (and evaluation) exist, not when its
checkpoint does; the run directory's config.yaml is a record that cannot be edited
silently; the training log is on disk before a checkpoint counts it. Through the CLI."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from bcvae import checkpoint, config, train
from conftest import ROOT, smoke_overrides
from test_reliability import assert_one_line_error, run, run_dir, train_cli

EVAL = ["eval.at_end=true", "eval.metrics=[mig]", "eval.num_points=500"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A smoke run trained to its budget with an end-of-run evaluation; tests copy it."""
    tmp = tmp_path_factory.mktemp("finished")
    proc = train_cli(tmp, "train.max_steps=6", *EVAL)
    assert proc.returncode == 0, proc.stderr
    return tmp


@pytest.fixture
def copy(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("damage", ["stale", "empty", "no-eval"])
def test_a_run_stopped_before_its_summary_or_evaluation_is_finished_by_the_rerun(copy, damage):
    d = run_dir(copy)
    want_summary, want_eval = _json(d / "summary.json"), _json(d / "eval.json")
    if damage == "stale":     # killed during the final evaluation: an earlier summary is left
        (d / "summary.json").write_text(json.dumps({**want_summary, "step": 3}))
        (d / "eval.json").unlink()
    elif damage == "empty":
        (d / "summary.json").write_text("")
    else:
        (d / "eval.json").unlink()
    proc = train_cli(copy, "train.max_steps=6", *EVAL)
    assert proc.returncode == 0, proc.stderr
    assert "finishing it" in proc.stderr and "Traceback" not in proc.stderr
    summary = _json(d / "summary.json")
    assert summary["step"] == 6 == _json(d / "eval.json")["step"]
    for key, value in want_summary.items():   # validation is recomputed with the same seed
        if key == "provenance":                # names the (copied) cache file
            continue
        assert summary[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    assert _json(d / "eval.json")["scores"] == want_eval["scores"]
    again = train_cli(copy, "train.max_steps=6", *EVAL)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_an_edited_config_record_is_refused_naming_file_and_key(copy):
    path = run_dir(copy) / "config.yaml"
    record = yaml.safe_load(path.read_text())
    record["loss"]["gamma"] = 5.0
    path.write_text(yaml.safe_dump(record))
    proc = train_cli(copy, "train.max_steps=8")
    assert_one_line_error(proc, 2, path, "loss.gamma: 1000.0 -> 5.0", "record")
    assert checkpoint.load_checkpoint(run_dir(copy) / "checkpoint.pt")["step"] == 6, "nothing trained"
    path.unlink()                              # deleting the record is allowed: it is rewritten
    proc = train_cli(copy, "train.max_steps=8")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(path.read_text())["train"]["max_steps"] == 8


def test_resumable_changes_update_the_record_and_pass_the_check(copy):
    assert train_cli(copy, "train.max_steps=8").returncode == 0
    assert yaml.safe_load((run_dir(copy) / "config.yaml").read_text())["train"]["max_steps"] == 8
    assert train_cli(copy, "train.max_steps=9").returncode == 0


def test_cv_finishes_folds_instead_of_averaging_the_ones_it_finds(tmp_path):
    args = ["cv", str(ROOT / "experiments" / "smoke.yaml"), *smoke_overrides(tmp_path), "train.threads=1",
            "data.k=2", "train.epochs=1", "train.steps_per_epoch=3", *EVAL]
    assert run(*args).returncode == 0
    fold1 = tmp_path / "runs" / "smoke" / "fold1"
    (fold1 / "eval.json").unlink()
    (fold1 / "summary.json").write_text(json.dumps({"step": 1}))
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    cv = _json(tmp_path / "runs" / "smoke" / "cv_summary.json")
    assert len(cv["metrics"]["eval/mig"]["values"]) == 2 and len(cv["metrics"]["val/loss"]["values"]) == 2


def test_the_log_is_fsynced_before_every_checkpoint(tmp_path, monkeypatch):
    events = []
    real_fsync, real_save = os.fsync, checkpoint.save_checkpoint

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith("metrics.jsonl"):
            events.append(("sync", sum(1 for _ in open(target))))
        return real_fsync(fd)

    def save(path, payload):
        log = run_dir(tmp_path) / "metrics.jsonl"
        events.append(("checkpoint", sum(1 for _ in open(log)) if log.exists() else 0))
        return real_save(path, payload)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(train, "save_checkpoint", save)
    cfg = config.load(ROOT / "experiments" / "smoke.yaml", smoke_overrides(tmp_path) + ["eval.at_end=false"])
    train.train(cfg)
    checkpoints = [i for i, e in enumerate(events) if e[0] == "checkpoint"]
    assert len(checkpoints) >= 3
    for i in checkpoints[1:]:                 # the step-0 checkpoint precedes any log row
        assert events[i - 1][0] == "sync" and events[i - 1][1] == events[i][1], events
