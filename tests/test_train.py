"""Trainer: the real entry point on a tiny budget — checkpoints, exact resume,
W&B readback, NaN guard, config and checkpoint faults, cross-validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import wandb_records
from bcvae import checkpoint, config, crossval, errors, train
from conftest import ROOT, assert_same_params, params, smoke_overrides

SMOKE = ROOT / "experiments" / "smoke.yaml"
QUICK = ["eval.at_end=false", "train.threads=1"]


def load(tmp_path: Path, *extra: str) -> config.Config:
    return config.load(SMOKE, smoke_overrides(tmp_path) + QUICK + list(extra))




# ------------------------------------------------------------------ the smoke run

def test_smoke_run_writes_everything(smoke_run):
    files = {p.name for p in smoke_run.iterdir()}
    assert {"checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json", "eval.json", "wandb"} <= files
    ckpt = checkpoint.load_checkpoint(smoke_run / "checkpoint.pt")
    assert ckpt["step"] == 40 and ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0
    assert ckpt["provenance"]["source"] == "procedural"
    assert ckpt["wandb_run_id"] in wandb_records.run_ids(smoke_run)
    saved = config.from_dict(json.loads(json.dumps(ckpt["config"])))
    assert saved.name == "smoke" and saved.loss.objective == "capacity"


def test_smoke_run_streams_to_wandb(smoke_run):
    rows = wandb_records.history(smoke_run)
    keys = set().union(*rows)
    for key in ("train/loss", "train/rec", "train/kl", "train/C", "train/kl_dim/0", "train/lr", "train/img_per_s",
                "train/mi", "train/marginal_kl", "train/overshoot", "train/max_overshoot",
                "val/loss", "val/rec", "val/kl", "val/kl_dim/9", "val/mi", "val/marginal_kl", "eval/mig", "eval/sap"):
        assert key in keys, key
    media = {k.rsplit("/", 1)[0]: r[k] for r in rows for k in r if k.endswith("/_type")}
    assert media["images/reconstruction"] == "image-file"
    assert media["images/traversal"] == "image-file"
    assert media["images/traversal_gif"] == "video-file"
    assert media["images/val_reconstruction"] == "image-file"
    train_steps = sorted(r["_step"] for r in rows if "train/loss" in r)
    assert train_steps == list(range(5, 41, 5))  # every_train = 5 over 40 steps
    gif = next(r["images/traversal_gif/path"] for r in rows if "images/traversal_gif/path" in r)
    assert gif.endswith(".gif")


def test_jsonl_log_matches_wandb(smoke_run):
    local = [r for r in train.track.read_jsonl(smoke_run / "metrics.jsonl") if "train/loss" in r]
    remote = [r for r in wandb_records.history(smoke_run) if "train/loss" in r]
    assert [r["step"] for r in local] == [r["_step"] for r in remote]
    assert np.allclose([r["train/loss"] for r in local], [r["train/loss"] for r in remote])


def test_capacity_schedule_is_logged_from_the_global_step(smoke_run):
    rows = [r for r in train.track.read_jsonl(smoke_run / "metrics.jsonl") if "train/C" in r]
    # C(step) = 25·step/40 where update i (0-based) sees step i; a row logged at
    # step s averages the 5 updates s-5 .. s-1.
    for r in rows:
        steps = np.arange(r["step"] - 5, r["step"])
        assert r["train/C"] == pytest.approx(np.mean(np.minimum(25.0, 25.0 * steps / 40)), abs=1e-4)


# ------------------------------------------------------------------ exact resume

def test_budget_stop_then_resume_equals_uninterrupted(tmp_path):
    whole = train.Trainer(load(tmp_path / "a"))
    whole.fit()
    part = load(tmp_path / "b", "train.max_steps=13")  # stops inside epoch 1
    train.train(part)
    ckpt = checkpoint.load_checkpoint(train.run_dir_for(part) / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (13, 0, 13)
    train.train(load(tmp_path / "b"))  # budget lifted: resumes mid-epoch
    assert_same_params(params(whole.dir), params(train.run_dir_for(part)))
    rows = [r for r in train.track.read_jsonl(train.run_dir_for(part) / "metrics.jsonl") if "train/loss" in r]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "resumed log must not repeat steps"
    # The running largest KL − C survives the resume: it is rebuilt from the log.
    overshoot = np.array([r["train/overshoot"] for r in rows])
    np.testing.assert_allclose([r["train/max_overshoot"] for r in rows], np.maximum.accumulate(overshoot))
    np.testing.assert_allclose(overshoot, [r["train/kl"] - r["train/C"] for r in rows])
    first_resumed = steps.index(15)
    assert overshoot[first_resumed] < overshoot[:first_resumed].max(), "the check needs a maximum to carry over"


def test_an_sgd_run_resumes_exactly(tmp_path):
    # SGD's momentum buffer is part of the optimiser state the checkpoint carries: without it the
    # resumed steps would restart the momentum and the parameters would differ.
    sgd = ("train.optimizer=sgd", "train.lr=1e-4", "train.max_steps=12")
    whole = train.Trainer(load(tmp_path / "a", *sgd))
    whole.fit()
    part = load(tmp_path / "b", *sgd[:2], "train.max_steps=5")
    train.train(part)
    assert checkpoint.load_checkpoint(train.run_dir_for(part) / "checkpoint.pt")["opt"]["state"]
    train.train(load(tmp_path / "b", *sgd))
    assert_same_params(params(whole.dir), params(train.run_dir_for(part)))


def _batch_mi(cfg: config.Config, monkeypatch) -> tuple[train.Trainer, list[float]]:
    """Train ``cfg``; returns the trainer and the I(x; z) its update k (1-based) read, at index k − 1."""
    mi, real_step = [], train.Trainer._guarded_step

    def spy(self, x, x_other):
        terms = real_step(self, x, x_other)
        mi.append(float(terms["mi"]))
        return terms

    with monkeypatch.context() as m:
        m.setattr(train.Trainer, "_guarded_step", spy)
        trainer = train.Trainer(cfg)
        trainer.fit()
    return trainer, mi


def test_a_conditional_warm_start_ends_when_the_decoder_reads_z_and_survives_a_resume(tmp_path, monkeypatch):
    warm = ["loss.warm_start_steps=3", "loss.gamma_warmup_steps=10"]
    # Until it ends, a conditional run is the plain ELBO run: its batch MI says where it will end.
    never = "loss.warm_start_until_mi=7.0"                 # below log N = 7.5, above anything 40 steps reach
    _, mi = _batch_mi(load(tmp_path / "elbo", *warm, never), monkeypatch)
    threshold = max(mi[3:25])                              # reached first somewhere in updates 4 … 25
    end = next(k for k in range(3, 41) if mi[k - 1] >= threshold)
    assert 3 < end <= 25, "the end must come after warm_start_steps and before the budget stop below"
    conditional = [*warm, f"loss.warm_start_until_mi={threshold!r}"]
    whole, _ = _batch_mi(load(tmp_path / "a", *conditional), monkeypatch)
    assert whole.warm_start_end == end
    rows = list(train.track.read_jsonl(whole.dir / "metrics.jsonl"))
    for r in rows:
        # Update j (0-based) has γ = 0 while j < end, and at j = end, the first step of γ's warm-up.
        if "train/gamma" in r:   # a row averages updates r["step"] − 5 … r["step"] − 1
            assert (r["train/gamma"] == 0) == (r["step"] - 1 <= end), r
            assert r.get("train/warm_start_end") == (end if r["step"] >= end else None), r
        if "val/gamma" in r:     # validation scores the objective of its step too
            assert (r["val/gamma"] == 0) == (r["step"] <= end), r
    # Stopped after the end and resumed: the end comes from the checkpoint, not from a new decision.
    part = load(tmp_path / "b", *conditional, "train.max_steps=30")
    train.train(part)
    assert checkpoint.load_checkpoint(train.run_dir_for(part) / "checkpoint.pt")["warm_start_end"] == end
    train.train(load(tmp_path / "b", *conditional))
    assert_same_params(params(whole.dir), params(train.run_dir_for(part)))
    logged = [[(r["step"], r["train/loss"], r["train/gamma"]) for r in train.track.read_jsonl(d / "metrics.jsonl")
               if "train/loss" in r] for d in (whole.dir, train.run_dir_for(part))]
    assert logged[0] == logged[1]


def _train_crashing_at(step: int, cfg: config.Config, monkeypatch) -> None:
    """Train ``cfg`` as a process that dies outright before optimisation step ``step``: no
    signal handler runs, nothing more is written. The real step is restored afterwards."""
    real_step = train.Trainer._guarded_step

    def crash(self, x, x_other):
        if self.step == step:
            raise RuntimeError("machine lost")
        return real_step(self, x, x_other)

    with monkeypatch.context() as m:
        m.setattr(train.Trainer, "_guarded_step", crash)
        train.train(cfg)


def test_a_crash_mid_epoch_loses_only_the_steps_since_the_periodic_checkpoint(tmp_path, monkeypatch):
    """A process killed outright writes nothing more: the periodic in-epoch checkpoint bounds the loss,
    and resuming from it gives the uninterrupted run's parameters and log."""
    every = ["train.epochs=2", "train.steps_per_epoch=30", "train.checkpoint_every=10"]
    whole = train.Trainer(load(tmp_path / "a", *every))
    whole.fit()
    with pytest.raises(RuntimeError, match="machine lost"):
        _train_crashing_at(27, load(tmp_path / "b", *every), monkeypatch)
    run_dir = train.run_dir_for(load(tmp_path / "b", *every))
    ckpt = checkpoint.load_checkpoint(run_dir / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (20, 0, 20)  # steps 21-27 lost, no more
    train.train(load(tmp_path / "b", *every))
    assert_same_params(params(whole.dir), params(run_dir))
    logged = [[(r["step"], r["train/loss"]) for r in train.track.read_jsonl(d / "metrics.jsonl") if "train/loss" in r]
              for d in (whole.dir, run_dir)]
    assert logged[0] == logged[1]


def test_without_periodic_checkpoints_a_crash_falls_back_to_the_epoch_start(tmp_path, monkeypatch):
    cfg = load(tmp_path, "train.epochs=2", "train.steps_per_epoch=30", "train.checkpoint_every=0")
    with pytest.raises(RuntimeError, match="machine lost"):
        _train_crashing_at(27, cfg, monkeypatch)
    assert checkpoint.load_checkpoint(train.run_dir_for(cfg) / "checkpoint.pt")["step"] == 0  # the run's start


def _run_cli(tmp: Path, *extra: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    args = [sys.executable, "-m", "bcvae", "train", str(SMOKE), *smoke_overrides(tmp), *QUICK, *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    start = time.time()
    while not predicate():
        if time.time() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    rows = train.track.read_jsonl(path) if path.exists() else []
    return max((r["step"] for r in rows), default=0)


LONG = ["train.epochs=3", "train.steps_per_epoch=30", "log.every_train=1"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    ref = load(tmp_path / "ref", *LONG)
    train.train(ref)
    killed = tmp_path / "killed"
    run_dir = train.run_dir_for(load(killed, *LONG))
    proc = _run_cli(killed, *LONG)
    _wait_for(lambda: _logged_step(run_dir) >= 40 or proc.poll() is not None)  # epoch 2 underway
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert checkpoint.load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    resumed = _run_cli(killed, *LONG)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in err
    assert_same_params(params(train.run_dir_for(ref)), params(run_dir))
    assert len(wandb_records.run_ids(run_dir)) == 1, "the W&B run id must be reused"


def test_sigterm_writes_checkpoint_and_says_how_to_resume(tmp_path):
    run_dir = train.run_dir_for(load(tmp_path, *LONG))
    proc = _run_cli(tmp_path, *LONG)
    _wait_for(lambda: _logged_step(run_dir) >= 35 or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "resume" in err and "checkpoint saved" in err
    ckpt = checkpoint.load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["step"] >= 35 and ckpt["step_in_epoch"] == ckpt["step"] - 30
    ref = load(tmp_path / "ref", *LONG)
    train.train(ref)
    train.train(load(tmp_path, *LONG))
    assert_same_params(params(train.run_dir_for(ref)), params(run_dir))


# ------------------------------------------------------------------ faults

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = load(tmp_path)
    real = train.vae_loss

    def poisoned(loss_cfg, x, logits, mu, logvar, z, step, **kw):
        loss, terms = real(loss_cfg, x, logits, mu, logvar, z, step, **kw)
        if step >= 25:
            loss = loss * float("nan")
            terms = {**terms, "loss": loss.detach()}
        return loss, terms

    monkeypatch.setattr(train, "vae_loss", poisoned)
    with pytest.raises(errors.TrainingError, match=r"non-finite training loss.*last good checkpoint"):
        train.train(cfg)
    ckpt = checkpoint.load_checkpoint(train.run_dir_for(cfg) / "checkpoint.pt")
    assert ckpt["step"] == 20 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_with_a_different_config_is_refused_then_fresh_starts_over(tmp_path):
    cfg = load(tmp_path, "train.max_steps=5")
    train.train(cfg)
    with pytest.raises(errors.TrainingError, match=r"train\.lr: 0\.0005 -> 0\.001.*--fresh"):
        train.Trainer(load(tmp_path, "train.lr=1e-3"))
    train.train(load(tmp_path, "train.lr=1e-3", "train.max_steps=5"), fresh=True)
    assert list(train.run_dir_for(cfg).parent.glob("fold0.old-*")), "the old run is kept aside"
    assert checkpoint.load_checkpoint(train.run_dir_for(cfg) / "checkpoint.pt")["config"]["train"]["lr"] == 1e-3


@pytest.mark.parametrize("amp, device, arithmetic", [
    ("auto", "cuda", "bf16+tf32"), ("bf16", "cuda", "bf16+tf32"), ("off", "cuda", "float32"),
    ("auto", "cpu", "float32"), ("bf16", "cpu", "bf16"), ("off", "cpu", "float32"),
])
def test_precision_resolves_train_amp_on_each_device(amp, device, arithmetic):
    assert train.precision(amp, device) == arithmetic


def test_resume_compares_the_arithmetic_not_the_spelling_of_train_amp(tmp_path):
    # A run trained with train.amp=off (as on a GPU) resumes on this CPU with the default
    # train.amp=auto: both are float32 here, so the run goes on and its record follows.
    cfg = load(tmp_path, "train.max_steps=3", "train.amp=off")
    train.train(cfg)
    path = train.run_dir_for(cfg) / "checkpoint.pt"
    assert checkpoint.load_checkpoint(path)["precision"] == "float32"
    train.train(load(tmp_path, "train.max_steps=5"))
    assert checkpoint.load_checkpoint(path)["step"] == 5
    assert config.load(path.parent / "config.yaml").train.amp == "auto"
    # bf16 on this CPU is other arithmetic: refused, naming both
    with pytest.raises(errors.TrainingError, match=r"arithmetic: 'float32' -> 'bf16' \(train\.amp='bf16' on cpu"):
        train.Trainer(load(tmp_path, "train.max_steps=7", "train.amp=bf16"))
    # a checkpoint from a GPU's bf16 autocast does not silently go on in float32 here
    ckpt = checkpoint.load_checkpoint(path)
    checkpoint.save_checkpoint(path, {**ckpt, "precision": "bf16+tf32"})
    with pytest.raises(errors.TrainingError, match=r"arithmetic: 'bf16\+tf32' -> 'float32'"):
        train.Trainer(load(tmp_path, "train.max_steps=7"))
    # a checkpoint that predates the record is compared by train.amp as written
    del ckpt["precision"]
    checkpoint.save_checkpoint(path, ckpt)
    with pytest.raises(errors.TrainingError, match=r"train\.amp: 'auto' -> 'off'"):
        train.Trainer(load(tmp_path, "train.max_steps=7", "train.amp=off"))


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    cfg = load(tmp_path, "train.max_steps=3")
    train.train(cfg)
    path = train.run_dir_for(cfg) / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.CheckpointError, match="truncated, corrupt"):
        train.Trainer(load(tmp_path, "train.max_steps=3"))
    torch.save({"version": checkpoint.CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(errors.CheckpointError, match="newer"):
        checkpoint.load_checkpoint(path)


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"version": 1, "payload": Path("x")}, path)  # an arbitrary class, not tensors
    with pytest.raises(errors.CheckpointError):
        checkpoint.load_checkpoint(path)


def test_other_architecture_checkpoint_is_refused(tmp_path):
    cfg = load(tmp_path, "train.max_steps=2")
    train.train(cfg)
    path = train.run_dir_for(cfg) / "checkpoint.pt"
    ckpt = checkpoint.load_checkpoint(path)
    ckpt["model"] = {k: v[..., :1] if v.ndim else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    with pytest.raises(errors.CheckpointError, match="different architecture"):
        train.Trainer(load(tmp_path, "train.max_steps=2"))


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = load(tmp_path, "train.max_steps=20")
    train.train(cfg)
    path = train.run_dir_for(cfg) / "checkpoint.pt"
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(errors.CheckpointError, match="No space left.*previous checkpoint .* is intact"):
        train.train(load(tmp_path, "train.max_steps=30"))
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".checkpoint.pt.tmp-*")), "no temp file left behind"


def test_wandb_failure_does_not_lose_training(tmp_path, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("tracker unavailable")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = load(tmp_path, "train.max_steps=10")
    summary = train.train(cfg)
    assert summary["step"] == 10
    assert "continuing with the local log" in caplog.text
    assert any("train/loss" in r for r in train.track.read_jsonl(train.run_dir_for(cfg) / "metrics.jsonl"))


# ------------------------------------------------------------------ objectives and experiments

@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_file_runs_a_few_steps(tmp_path, path):
    small = ["data.subset=600", "train.max_steps=3", "train.batch_size=16", "train.val_batch_size=64",
             "train.val_max_batches=1", "eval.at_end=false", "eval.every_epochs=0", "train.threads=1"]
    if config.load(path).loss.warm_start_until_mi > 0:
        # 540 training images cap the I(x; z) estimate at log 540 = 6.3 nats, so the file's
        # threshold would be refused (test_user_mistakes); a reachable one keeps the conditional path.
        small.append("loss.warm_start_until_mi=1.0")
    cfg = config.load(path, smoke_overrides(tmp_path) + small)
    summary = train.train(cfg)
    assert summary["step"] == 3 and np.isfinite(summary["val/loss"])


def test_factor_vae_updates_both_networks_without_leaking(tmp_path):
    cfg = load(tmp_path, "loss.objective=factor", "train.max_steps=4")
    trainer = train.Trainer(cfg)
    disc_before = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
    enc_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert any(not torch.equal(disc_before[k], v) for k, v in trainer.disc.state_dict().items())
    assert any(not torch.equal(enc_before[k], v) for k, v in trainer.model.state_dict().items())
    # Discriminator gradients come only from the discriminator loss: replay one step by hand.
    x = trainer.split.train.batch(np.arange(32), trainer.device)
    trainer.model.zero_grad()
    z = train.sample_posterior(trainer.model, x)
    d_loss, _ = train.discriminator_loss(trainer.disc, z, train.sample_posterior(trainer.model, x))
    d_loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


def test_learning_rate_schedule_is_a_pure_function_of_the_epoch():
    cfg = config.Config().train
    cfg.lr, cfg.lr_decay, cfg.lr_decay_epochs = 5e-3, 0.95, 10
    assert [train.lr_at(cfg, e) for e in (0, 9, 10, 25)] == pytest.approx([5e-3, 5e-3, 5e-3 * 0.95, 5e-3 * 0.95**2])
    # The original steps its scheduler after epochs 0, 10, 20, ... (run.py: `if e % 10 == 0`),
    # so epochs 1-10 run at 0.95·lr, 11-20 at 0.95²·lr: written out epoch by epoch.
    cfg.lr_decay_first = 1
    original = [5e-3 * 0.95 ** sum(1 for k in range(e) if k % 10 == 0) for e in range(80)]
    assert [train.lr_at(cfg, e) for e in range(80)] == pytest.approx(original)


def test_cross_validation_summarises_every_fold(tmp_path):
    cfg = load(tmp_path, "data.k=3", "train.epochs=1", "train.steps_per_epoch=3")
    out = crossval.cross_validate(cfg)
    per_fold = [json.loads((Path(cfg.run_dir) / "smoke" / f"fold{k}" / "summary.json").read_text()) for k in range(3)]
    rec = [s["val/rec"] for s in per_fold]
    assert out["metrics"]["val/rec"]["mean"] == pytest.approx(np.mean(rec))
    assert out["metrics"]["val/rec"]["std"] == pytest.approx(np.std(rec, ddof=1))
    saved = json.loads((Path(cfg.run_dir) / "smoke" / "cv_summary.json").read_text())
    assert saved["folds"] == 3 and saved["metrics"]["val/rec"]["values"] == pytest.approx(rec)
    folds = {p.parent.name for p in Path(cfg.run_dir).glob("smoke/fold*/checkpoint.pt")}
    assert folds == {"fold0", "fold1", "fold2"}


def test_validation_never_sees_training_images(tmp_path):
    trainer = train.Trainer(load(tmp_path))
    assert not set(trainer.split.train.index) & set(trainer.split.val.index)


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bcvae", "train", "smoke", "train.lrr=1"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'train.lr'" in proc.stderr


def test_limited_validation_samples_the_whole_fold():
    n, b = 73_728, 1024
    idx = train.validation_indices(n, b, 8, seed=0)
    assert len(idx) == 8 * b and len(set(idx)) == len(idx)
    # the stored fold is sorted by factors: a fair sample reaches its last tenth, not just its start
    assert idx.min() < n // 10 and idx.max() > n - n // 10
    assert np.array_equal(idx, train.validation_indices(n, b, 8, seed=0))
    assert np.array_equal(train.validation_indices(n, b, 0, seed=0), np.arange(n))


def test_each_run_logs_to_its_own_wandb_run_even_if_another_is_open(tmp_path):
    # A trainer built but never fitted leaves its W&B run open in this process.
    train.Trainer(load(tmp_path / "open"))
    cfg = load(tmp_path / "second", "train.max_steps=5")
    train.train(cfg)
    # W&B's service writes the record file on its own schedule; on a loaded machine the last
    # records can reach the disk a moment after finish() returns. Scalars logged into the other,
    # still-open run never appear here, however long one waits.
    deadline = time.time() + 30
    while True:
        rows = wandb_records.history(train.run_dir_for(cfg))
        if any("train/loss" in r for r in rows) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert any("train/loss" in r for r in rows), "the second run's scalars must land in its own run"


def test_a_config_error_is_reported_before_torch_is_imported():
    # importing torch takes seconds; a typo should not wait for it
    code = ("import sys; from bcvae.cli import main; rc = main(['train', 'smoke', 'train.lrr=1']); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
