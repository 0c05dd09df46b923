"""Reliability matrix: kills, interrupts, damaged files, bad configs, full disks, W&B faults.

Every case drives the real entry point, ``python -m bcvae ...``, in a subprocess
(runs, data cache and W&B inside ``tmp_path``) and checks what a researcher sees:
the exit code, one readable line instead of a traceback, a checkpoint that always
loads, and a resumed run whose parameters equal those of an uninterrupted run.

Faults are real where the operating system can produce them without privileges:
a full disk is ``/dev/full`` behind the checkpoint's temporary name, or a 64 KiB
tmpfs over the cache directory (in a user namespace; skipped where unavailable);
a checkpoint write is caught mid-way by putting a FIFO under its temporary name.
The kill/interrupt cases (``slow``) compare against one uninterrupted reference run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import h5py
import numpy as np
import pytest
import torch

import wandb_records
from bcvae import checkpoint, config, train
from bcvae.data import all_latents_classes, cache_path, render_dsprites
from bcvae.track import read_jsonl
from conftest import ROOT, assert_same_params, params, smoke_overrides

SMOKE = ROOT / "experiments" / "smoke.yaml"
QUICK = ["eval.at_end=false", "train.threads=1"]
# Three short epochs, every step logged: the moments of a run are visible in metrics.jsonl.
LONG = ["train.epochs=3", "train.steps_per_epoch=30", "log.every_train=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false",
       "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
CACHE_NAME = "dsprites_folds_procedural_seed0_k10_n2000.h5"  # smoke: procedural, 2000 images, k=10


# ------------------------------------------------------------------ helpers

def overrides(tmp: Path, *extra: str) -> list[str]:
    return [*smoke_overrides(tmp), *QUICK, *extra]


def bcvae_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "bcvae", *args]


def run(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m bcvae <args>`` from the repository root, to completion."""
    return subprocess.run(bcvae_args(*args), cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def start(*args: str, **kw) -> subprocess.Popen:
    """``python -m bcvae <args>`` in the background, in its own process group (like a terminal job)."""
    return subprocess.Popen(bcvae_args(*args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def train_cli(tmp: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return run("train", str(SMOKE), *overrides(tmp, *extra), **kw)


def run_dir(tmp: Path) -> Path:
    return tmp / "runs" / "smoke" / "fold0"


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """Exit ``code``, no traceback, and a last stderr line that is the error, naming ``names``."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{err}"
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(("error:", "config error:")), err
    for name in names:
        assert str(name) in line, f"{name!r} not named in: {line}"
    return line


def start_resumed(tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start ``train`` on an existing run; return once it has resumed (and cleared old temporaries)."""
    proc = start("train", str(SMOKE), *overrides(tmp, *extra))
    seen = ""
    while "resuming" not in seen:
        line = proc.stderr.readline()
        assert line, f"exited ({proc.wait()}) without resuming:\n{seen}"
        seen += line
    return proc, seen


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0, poll: float = 0.01) -> None:
    """Poll ``predicate`` until true; fail early (with its stderr) if ``proc`` exits first."""
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before the moment was reached:\n"
                                 f"{proc.stderr.read()}")
        if time.time() > deadline:
            proc.kill()
            raise TimeoutError("moment not reached")
        time.sleep(poll)


def rows(directory: Path) -> list[dict]:
    path = directory / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def train_losses(directory: Path) -> dict[int, float]:
    """``{step: train/loss}``; asserts that no step was logged twice (a resumed log is truncated)."""
    steps = [r["step"] for r in rows(directory) if "train/loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(steps)}"
    return {r["step"]: r["train/loss"] for r in rows(directory) if "train/loss" in r}




def assert_matches_reference(directory: Path, reference: dict) -> None:
    """Final parameters, the logged loss curve and the W&B run id of a run that was interrupted."""
    assert_same_params(params(directory), reference["params"])
    assert train_losses(directory) == reference["losses"], "the loss curve differs from the uninterrupted run"
    assert len(wandb_records.run_ids(directory)) == 1, "the W&B run id must be reused on resume"
    assert not list(directory.glob(".checkpoint.pt.tmp-*")), "temporaries of killed writes must be cleaned up"


def exit_records(wandb_file: Path) -> list:
    return [r.exit for r in wandb_records.read_records(wandb_file) if r.WhichOneof("record_type") == "exit"]


def read_cache(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in ("images", "latents_classes", "index", "fold_offsets")}


def assert_cache_is_true_dsprites(path: Path) -> None:
    """Independent truth: stored classes are the real file's rows ``index``, images their rendering."""
    data = read_cache(path)
    assert np.array_equal(data["latents_classes"], all_latents_classes()[data["index"]])
    images = np.unpackbits(data["images"], axis=1).reshape(-1, 64, 64)
    assert np.array_equal(images, render_dsprites(data["latents_classes"]))
    assert len(np.unique(data["index"])) == len(data["index"]) == data["fold_offsets"][-1]


# ------------------------------------------------------------------ shared runs

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted LONG run (in-process): final parameters and loss curve."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config.load(SMOKE, overrides(tmp, *LONG))
    train.train(cfg)
    return {"params": params(train.run_dir_for(cfg)), "losses": train_losses(train.run_dir_for(cfg))}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A smoke run stopped by its budget at step 3 through the CLI; tests copy its ``tmp`` root."""
    tmp = tmp_path_factory.mktemp("short")
    proc = train_cli(tmp, "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr
    return tmp


@pytest.fixture
def copied_run(short_run, tmp_path) -> Path:
    """A private copy of ``short_run`` (run directory and data cache); returns its ``tmp`` root."""
    shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ------------------------------------------------------------------ 1. kills and interrupts

@pytest.mark.slow
def test_sigkill_during_validation_then_resume_equals_uninterrupted(tmp_path, reference):
    # One image per validation batch: validation takes seconds, a window polling cannot miss.
    extra = (*LONG, "train.val_batch_size=1")
    directory = run_dir(tmp_path)

    def validating() -> bool:  # epoch 2's last training step is logged, its validation is not
        logged = rows(directory)
        return any(r["step"] == 60 and "train/loss" in r for r in logged)

    proc = start("train", str(SMOKE), *overrides(tmp_path, *extra))
    wait_for(validating, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not any("val/loss" in r for r in rows(directory) if r["step"] == 60), "killed too late: validation ended"
    ckpt = checkpoint.load_checkpoint(directory / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"]) == (30, 1), "the epoch-1 checkpoint must be the one on disk"
    resumed = train_cli(tmp_path, *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "at step 30" in resumed.stderr
    assert_matches_reference(directory, reference)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, reference):
    directory = run_dir(tmp_path)
    first = train_cli(tmp_path, *LONG, "train.max_steps=30")  # epoch 1 done, checkpoint at step 30
    assert first.returncode == 0, first.stderr
    before = (directory / "checkpoint.pt").read_bytes()

    proc, _ = start_resumed(tmp_path, *LONG)  # epoch 2 (30 steps, validation) lies ahead
    fifo = directory / f".checkpoint.pt.tmp-{proc.pid}"  # the name its next checkpoint write opens
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    received = bytearray()

    def writing() -> bool:  # the epoch-2 checkpoint has begun streaming into the FIFO
        try:
            received.extend(os.read(reader, 1 << 16))
        except BlockingIOError:  # the writer has opened it, no bytes yet
            pass
        return len(received) > 0

    try:
        wait_for(writing, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the writer is blocked mid-file: the pipe holds 64 KiB
        proc.communicate()
    finally:
        os.close(reader)
    assert 0 < len(received) < len(before), "the kill must land inside the write"
    assert any("val/loss" in r for r in rows(directory) if r["step"] == 60), "epoch 2 was validated"
    assert (directory / "checkpoint.pt").read_bytes() == before, "a torn write replaced the checkpoint"
    assert checkpoint.load_checkpoint(directory / "checkpoint.pt")["step"] == 30
    resumed = train_cli(tmp_path, *LONG)
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 30" in resumed.stderr
    assert_matches_reference(directory, reference)


def _stderr_lines(proc: subprocess.Popen) -> list[str]:
    """Collect ``proc``'s stderr lines in the background (a list that grows)."""
    lines: list[str] = []

    def pump() -> None:
        for line in iter(proc.stderr.readline, ""):
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_the_checkpoint(tmp_path, reference):
    """Kills at random points of training (steps, validation, checkpoints), then one resume.

    Attempt i is killed a random 0-0.4 s after its log reaches step ``targets[i]``,
    counted only once it has resumed (before that the log still holds the rows of the
    previous attempt, which a resume drops).
    """
    directory, rng = run_dir(tmp_path), random.Random(8)
    # One kill inside the first epoch (before any epoch's checkpoint), four later ones.
    targets, steps = [rng.randrange(1, 25), *sorted(rng.sample(range(30, 90), 4))], []
    for target in targets:
        fresh = not (directory / "checkpoint.pt").exists()
        proc = start("train", str(SMOKE), *overrides(tmp_path, *LONG))
        lines = _stderr_lines(proc)

        def reached() -> bool:
            resumed = fresh or any("resuming" in line for line in lines)
            return resumed and any(r["step"] >= target for r in rows(directory))

        wait_for(reached, proc)
        time.sleep(rng.uniform(0.0, 0.4))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = checkpoint.load_checkpoint(directory / "checkpoint.pt")  # raises if torn
        steps.append(ckpt["step"])
        assert ckpt["step"] <= target + 30, "a checkpoint from the future"
    assert steps == sorted(steps), f"the checkpoint went backwards: {steps}"
    assert len(set(steps)) > 1, f"the kills never let a checkpoint advance: {steps}"
    final = train_cli(tmp_path, *LONG)
    assert final.returncode == 0, final.stderr
    assert_matches_reference(directory, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_checkpoints_finishes_wandb_and_resumes(tmp_path, reference, signum):
    directory = run_dir(tmp_path)
    proc = start("train", str(SMOKE), *overrides(tmp_path, *LONG))
    wait_for(lambda: any(r["step"] >= 35 for r in rows(directory)), proc)
    os.killpg(proc.pid, signum)  # to the whole process group, as a terminal's Ctrl-C or a scheduler
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped:") and signal.Signals(signum).name in line
    assert "Run the same command again to resume" in line
    ckpt = checkpoint.load_checkpoint(directory / "checkpoint.pt")
    assert ckpt["step"] >= 35 and str(directory / "checkpoint.pt") in line
    assert [e.exit_code for e in exit_records(wandb_records.run_file(directory))] == [1], \
        "the W&B run must be finished (an exit record), marked as not successful"
    resumed = train_cli(tmp_path, *LONG)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {ckpt['step']}" in resumed.stderr
    assert_matches_reference(directory, reference)
    assert [e.exit_code for e in exit_records(wandb_records.run_file(directory))] == [0]


def test_ctrl_c_during_a_cache_build_leaves_no_partial_cache(tmp_path):
    proc = start("data", "build", "smoke", *overrides(tmp_path, "data.subset=200000"))  # seconds of rendering
    seen = ""
    while "building fold cache" not in seen:
        line = proc.stderr.readline()
        assert line, f"exited ({proc.wait()}) before building:\n{seen}"
        seen += line
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped:"), err
    left = [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")]
    assert left == [], f"partial cache left: {left}"


# ------------------------------------------------------------------ 3. data faults

def _foreign(path: Path) -> None:
    np.savez(path, images=np.zeros((4, 64, 64), np.uint8), labels=np.arange(4))


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(50_000))


def _truncated_npz(path: Path) -> None:
    np.savez_compressed(path, imgs=np.ones((64, 64, 64), np.uint8), latents_classes=np.zeros((64, 6), np.int64))
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("damage", [None, _truncated_npz, _random_bytes, _foreign],
                         ids=["missing", "truncated", "random-bytes", "foreign"])
def test_bad_npz_is_one_clear_error_and_no_cache(tmp_path, damage):
    npz = tmp_path / "dsprites.npz"
    if damage is not None:
        damage(npz)
    proc = run("data", "build", "smoke", *overrides(tmp_path, "data.source=dsprites", f"data.path={npz}"))
    assert_one_line_error(proc, 1, npz)
    left = [p.name for p in (tmp_path / "data").glob("*") if not p.name.endswith(".lock")]
    assert left == [], "no cache, not even a partial one"


def test_auto_source_with_a_corrupt_npz_never_falls_back_silently(tmp_path):
    npz = tmp_path / "dsprites.npz"
    _random_bytes(npz)
    proc = train_cli(tmp_path, "data.source=auto", f"data.path={npz}", "train.max_steps=2")
    assert_one_line_error(proc, 1, npz)
    assert not (run_dir(tmp_path) / "checkpoint.pt").exists(), "nothing may train on another dataset"


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory) -> Path:
    """The smoke fold cache built by ``bcvae data build``."""
    tmp = tmp_path_factory.mktemp("cache")
    proc = run("data", "build", "smoke", *overrides(tmp))
    assert proc.returncode == 0, proc.stderr
    assert "fold cache ready" in proc.stdout
    return tmp / "data" / CACHE_NAME


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def _attribute(key: str, value):
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f.attrs[key] = value
    return damage


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "unreadable"),
    (_garbage, "unreadable"),
    (_attribute("cache_version", 0), "cache_version"),
    (_attribute("renderer_version", "0"), "renderer_version"),
], ids=["truncated", "garbage", "old-cache-version", "old-renderer-version"])
def test_damaged_or_stale_cache_is_rebuilt_transparently(tmp_path, pristine_cache, damage, reason):
    path = tmp_path / "data" / CACHE_NAME
    path.parent.mkdir()
    shutil.copy(pristine_cache, path)
    damage(path)
    proc = run("data", "build", "smoke", *overrides(tmp_path))
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "rebuilding" in line)
    assert str(path) in warning and reason in warning
    good, rebuilt = read_cache(pristine_cache), read_cache(path)
    assert all(np.array_equal(good[name], rebuilt[name]) for name in good)
    assert_cache_is_true_dsprites(path)


def test_training_rebuilds_a_truncated_cache(tmp_path, pristine_cache):
    path = tmp_path / "data" / CACHE_NAME
    path.parent.mkdir()
    shutil.copy(pristine_cache, path)
    _truncate(path)
    proc = train_cli(tmp_path, "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr
    assert "rebuilding" in proc.stderr
    assert_cache_is_true_dsprites(path)


def _overwrite_images(fold: int):
    """Noise over the images of one fold, written through h5py: layout and attributes intact."""
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            a, b = f["fold_offsets"][fold], f["fold_offsets"][fold + 1]
            f["images"][a:b] = np.random.default_rng(2).integers(0, 256, (b - a, 512), dtype=np.uint8)
    return damage


@pytest.mark.parametrize("fold", [0, 7], ids=["held-out-fold", "a-training-fold"])
def test_training_never_uses_images_overwritten_behind_intact_attributes(tmp_path, pristine_cache, fold):
    path = tmp_path / "data" / CACHE_NAME
    path.parent.mkdir()
    shutil.copy(pristine_cache, path)
    _overwrite_images(fold)(path)
    proc = train_cli(tmp_path, "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "rebuilding" in line)
    assert str(path) in warning and f"fold(s) [{fold}]" in warning and "sha256" in warning
    assert_cache_is_true_dsprites(path)


def test_two_processes_building_one_cache_build_it_once(tmp_path):
    cfg = config.load(SMOKE, overrides(tmp_path))
    path = cache_path(cfg.data)
    path.parent.mkdir(parents=True)
    logs = [tmp_path / f"build{i}.err" for i in range(2)]
    # Holding the lock makes both arrive while "someone" builds; released, one of them builds.
    lock = filelock.FileLock(str(path) + ".lock")
    lock.acquire()
    try:
        procs = [subprocess.Popen(bcvae_args("data", "build", "smoke", *overrides(tmp_path)), cwd=ROOT, env=ENV,
                                  stdout=subprocess.PIPE, stderr=log.open("w"), text=True) for log in logs]
        for proc in procs:
            wait_for(lambda: all("waiting for another process" in log.read_text() for log in logs), proc)
    finally:
        lock.release()
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    errs = "".join(log.read_text() for log in logs)
    assert [proc.returncode for proc in procs] == [0, 0], errs
    assert errs.count("building fold cache") == 1 and errs.count("built fold cache") == 1, errs
    assert all("fold cache ready" in out for out in outs)
    assert_cache_is_true_dsprites(path)


# ------------------------------------------------------------------ 4. config faults

CONFIG_FAULTS = {
    # id: (YAML file text or None for experiments/smoke.yaml, overrides, words the error names)
    "unknown-key": ("train:\n  lrr: 0.001\n", [], ["train.lrr", "did you mean 'train.lr'"]),
    "unknown-section": ("trian:\n  lr: 0.001\n", [], ["'trian'", "did you mean 'train'"]),
    "wrong-type": ("train:\n  epochs: three\n", [], ["train.epochs", "expected an integer"]),
    "float-as-string": ("train:\n  lr: 5e-4\n", [], ["train.lr", "read as a string", "5.0e-4"]),
    "zero-lr": ("train:\n  lr: 0.0\n", [], ["train.lr", "must be > 0"]),
    "negative-lr": (None, ["train.lr=-1e-4"], ["train.lr", "must be > 0"]),
    "fold-not-below-k": (None, ["data.k=3", "data.fold=3"], ["data.fold", "0..2"]),
    "unknown-objective": ("loss:\n  objective: bvae\n", [], ["loss.objective", "'bvae'", "capacity"]),
    "bad-wandb-mode": ("log:\n  wandb_mode: sideways\n", [], ["log.wandb_mode", "'sideways'"]),
    "invalid-yaml": ("train:\n  lr: 0.001\n    epochs: 2\n", [], ["not valid YAML", "line 3"]),
    "override-wrong-type": (None, ["train.batch_size=big"], ["command line", "train.batch_size"]),
}


def _experiment(tmp: Path, text: str | None) -> Path:
    if text is None:
        return SMOKE
    path = tmp / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(CONFIG_FAULTS))
def test_config_fault_is_one_line_naming_file_and_key(tmp_path, capsys, case):
    """Every case through the CLI's ``main`` in-process (milliseconds each)."""
    from bcvae import cli

    text, extra, words = CONFIG_FAULTS[case]
    experiment = _experiment(tmp_path, text)
    assert cli.main(["train", str(experiment), *overrides(tmp_path, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("config error:"), err
    for word in [*words, *([] if "command line" in words else [str(experiment)])]:
        assert word in err, f"{word!r} not named in: {err}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists(), "nothing runs on a bad config"


@pytest.mark.parametrize("case, command", [("float-as-string", "train"), ("invalid-yaml", "train"),
                                           ("fold-not-below-k", "data build")])
def test_config_fault_through_the_entry_point_exits_2(tmp_path, case, command):
    text, extra, words = CONFIG_FAULTS[case]
    experiment = _experiment(tmp_path, text)
    proc = run(*command.split(), str(experiment), *overrides(tmp_path, *extra))
    line = assert_one_line_error(proc, 2, str(experiment), *words)
    assert proc.stderr.strip() == line, "a config error is the only output"


def test_missing_experiment_file_lists_the_available_ones(tmp_path):
    proc = run("train", "capacity52", *overrides(tmp_path))
    line = assert_one_line_error(proc, 2, "experiments/capacity52.yaml", "not found", "capacity25")
    assert proc.stderr.strip() == line


# ------------------------------------------------------------------ 5. checkpoint faults

def _rewrite_checkpoint(tmp: Path, change) -> Path:
    path = run_dir(tmp) / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    torch.save(change(ckpt), path)
    return path


def _newer(ckpt):
    return {**ckpt, "version": checkpoint.CHECKPOINT_VERSION + 1}


def _narrower_model(ckpt):
    return {**ckpt, "model": {k: v[..., :1] if v.ndim else v for k, v in ckpt["model"].items()}}


def _other_arch_config(ckpt):
    return {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"], "arch": "original"}}}


def _only_a_version(ckpt):
    return {"version": checkpoint.CHECKPOINT_VERSION, "state_dict": ckpt["model"]}


def _pickled_object(ckpt):
    return {**ckpt, "note": Path("from another tool")}


@pytest.mark.parametrize("change, words", [
    (_newer, ["checkpoint format 2", "newer", "update bcvae"]),
    (_narrower_model, ["different architecture", "size mismatch for encoder"]),
    (_other_arch_config, ["different config", "model.arch: 'original' -> 'burgess'", "--fresh"]),
    (_only_a_version, ["not a complete bcvae checkpoint", "model"]),
    (_pickled_object, ["pickled", "pathlib"]),
], ids=["newer-format", "other-architecture", "other-arch-config", "foreign-dict", "pickled-object"])
def test_incompatible_checkpoint_is_refused_and_kept(copied_run, change, words):
    path = _rewrite_checkpoint(copied_run, change)
    before = path.read_bytes()
    proc = train_cli(copied_run, "train.max_steps=6")
    assert_one_line_error(proc, 1, path, *words)
    assert path.read_bytes() == before, "a refused checkpoint is never overwritten"


def test_a_second_training_of_a_run_in_use_is_refused(copied_run):
    directory = run_dir(copied_run)
    first, _ = start_resumed(copied_run, "train.epochs=100000")  # trains until killed
    try:
        second = train_cli(copied_run, "train.epochs=100000", "train.max_steps=40")
        assert_one_line_error(second, 1, directory, "in use by another training")
        assert first.poll() is None, "the first training must go on"
    finally:
        first.kill()
        first.wait()
    # SIGKILL leaves no stale lock behind: the OS dropped it with the process.
    again = train_cli(copied_run, "train.max_steps=6")
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------ 6. disk faults

def test_disk_full_during_checkpoint_keeps_the_previous_one(copied_run):
    directory = run_dir(copied_run)
    path = directory / "checkpoint.pt"
    before = path.read_bytes()

    proc, seen = start_resumed(copied_run)  # at step 3; the next checkpoint ends epoch 1 (step 20)
    # Its checkpoint temporary becomes /dev/full, where every write fails with ENOSPC.
    os.symlink("/dev/full", directory / f".checkpoint.pt.tmp-{proc.pid}")
    _, err = proc.communicate(timeout=300)
    failed = subprocess.CompletedProcess(proc.args, proc.returncode, "", seen + err)
    assert_one_line_error(failed, 1, path, "No space left on device", "previous checkpoint", "intact")
    assert path.read_bytes() == before
    assert not list(directory.glob(".checkpoint.pt.tmp-*")), "no temporary left behind"
    # Space is back: resumes from step 3 (the copy also moved the data cache, which is allowed).
    again = train_cli(copied_run, "train.max_steps=6")
    assert again.returncode == 0, again.stderr
    assert "at step 3" in again.stderr and checkpoint.load_checkpoint(path)["step"] == 6


MOUNTED = 97  # exit status of the wrapper when no tmpfs can be mounted here


def test_disk_full_while_building_the_cache_leaves_no_partial_file(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a tiny tmpfs")
    cache_dir = tmp_path / "data"
    cache_dir.mkdir()
    # A 64 KiB tmpfs over the cache directory, in a private mount namespace (no root needed
    # where user namespaces are allowed); it vanishes with the process, so list it before.
    script = ('mount -t tmpfs -o size=64k bcvae-full "$0" || exit 97; "$@"; rc=$?; '
              'echo "LEFT:$(ls -A "$0" | tr "\\n" " ")"; exit $rc')
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(cache_dir),
                           *bcvae_args("data", "build", "smoke", *overrides(tmp_path))],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if proc.returncode == MOUNTED or "LEFT:" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-200:]}")
    assert_one_line_error(proc, 1, "no space left on device", cache_dir, CACHE_NAME)
    left = proc.stdout.split("LEFT:")[-1].split()
    assert [name for name in left if not name.endswith(".lock")] == [], f"partial cache left: {left}"


# ------------------------------------------------------------------ 7. W&B faults

def _assert_trained_with_local_log(tmp: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "W&B could not start" in line)
    assert str(run_dir(tmp) / "metrics.jsonl") in warning
    logged = rows(run_dir(tmp))
    assert [r["step"] for r in logged if "train/loss" in r] == [5, 10]
    assert any("val/loss" in r for r in logged)
    assert checkpoint.load_checkpoint(run_dir(tmp) / "checkpoint.pt")["step"] == 10


def test_invalid_wandb_mode_in_the_environment_does_not_stop_training(tmp_path):
    proc = train_cli(tmp_path, "train.max_steps=10", env={**ENV, "WANDB_MODE": "bogus"})
    _assert_trained_with_local_log(tmp_path, proc)


def test_unwritable_wandb_directory_does_not_stop_training(tmp_path):
    run_dir(tmp_path).mkdir(parents=True)
    (run_dir(tmp_path) / "wandb").write_text("a file where W&B wants its directory")
    proc = train_cli(tmp_path, "train.max_steps=10")
    _assert_trained_with_local_log(tmp_path, proc)


def test_an_unreachable_wandb_server_falls_back_to_offline_quickly(tmp_path):
    # A key is configured but the server cannot be reached (a closed local port): W&B's own
    # 90 s wait becomes INIT_TIMEOUT_S, then the run logs offline under the same run id.
    from bcvae.track import INIT_TIMEOUT_S

    env = {**ENV, "WANDB_MODE": "online", "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    tic = time.perf_counter()
    proc = train_cli(tmp_path, "train.max_steps=10", env=env)
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - tic < INIT_TIMEOUT_S + 60
    assert any("logging offline instead" in line for line in proc.stderr.splitlines()), proc.stderr
    assert len(wandb_records.run_ids(run_dir(tmp_path))) == 1
    ckpt = checkpoint.load_checkpoint(run_dir(tmp_path) / "checkpoint.pt")
    assert ckpt["wandb_run_id"] in wandb_records.run_ids(run_dir(tmp_path))
