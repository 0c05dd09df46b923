"""benchmarks/gpu_runs.sh on a CPU (DEVICE=cpu): a run that ends comes back finished, one still going
at the deadline comes back checkpointed and resumes from its tarball, and checkpoints too large to
return are cut to what evaluation reads (finished) or dropped (unfinished)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_runs.sh"


def gpu_runs(tmp_path: Path, seconds: int, *specs: str, **env: str) -> subprocess.CompletedProcess:
    extra = (f"train.epochs=1000 data.cache_dir={tmp_path / 'data'} log.wandb_mode=disabled "
             "log.progress=false eval.at_end=false")
    full_env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "RESULTS": str(tmp_path / "out"),
                "EXTRA": extra, "OMP_NUM_THREADS": "1", **env}
    full_env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), str(seconds), *specs], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def unpack(tmp_path: Path, name: str, into: Path) -> Path:
    with tarfile.open(tmp_path / "out" / f"{name}.tar.gz") as tar:
        tar.extractall(into, filter="data")
    return into / name / "fold0"


def step_of(run: Path) -> int:
    from bcvae import checkpoint

    return checkpoint.load_checkpoint(run / "checkpoint.pt")["step"]


@pytest.mark.parametrize("args, message", [
    ([], "usage"),
    (["ten", "a=smoke:0"], "usage"),
    (["5", "a=smoke"], "bad run 'a=smoke'"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, message):
    r = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "RESULTS": str(tmp_path / "out")})
    assert r.returncode == 2
    assert message in r.stderr


def test_a_run_stopped_at_the_deadline_comes_back_resumable_and_a_finished_one_complete(tmp_path):
    r = gpu_runs(tmp_path, 25, "done=smoke:0:20", "cut=smoke:1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["cut.tar.gz", "done.tar.gz", "gpu_runs.log"]  # the per-run logs travel inside

    done = unpack(tmp_path, "done", tmp_path / "back")
    assert step_of(done) == 20
    assert (done / "summary.json").exists() and (done.parent / "train.log").exists()
    assert not (done / "wandb").exists()

    cut = unpack(tmp_path, "cut", tmp_path / "back")
    stopped = step_of(cut)
    assert 0 < stopped < 20_000  # 1000 epochs of 20 steps: only the deadline stops it
    assert "received SIGTERM" in (cut.parent / "train.log").read_text()
    assert "cut: exit 143" in (tmp_path / "out" / "gpu_runs.log").read_text()

    # the tarball resumes where it stopped, here on the same device
    r = gpu_runs(tmp_path, 120, f"cut=smoke:1:{stopped + 10}", RUNS=str(tmp_path / "back"),
                 RESULTS=str(tmp_path / "out2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming {cut / 'checkpoint.pt'} at step {stopped}" in (cut.parent / "train.log").read_text()
    assert step_of(cut) == stopped + 10


def test_checkpoints_too_large_to_return_keep_the_vae_when_finished_and_go_when_not(tmp_path):
    from bcvae import checkpoint

    r = gpu_runs(tmp_path, 25, "fv=factorvae:0:5", "cut=smoke:1", FIT_BYTES="1",
                 EXTRA=f"data.subset=2000 train.epochs=1000 data.cache_dir={tmp_path / 'data'} "
                       "log.wandb_mode=disabled log.progress=false eval.at_end=false")
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "out" / "gpu_runs.log").read_text()
    assert "finished at step 5; discriminator dropped" in log
    assert "too large to return; dropped (metrics kept)" in log

    fv = unpack(tmp_path, "fv", tmp_path / "back")
    ckpt = checkpoint.load_checkpoint(fv / "checkpoint.pt")
    assert "disc" not in ckpt and "disc_opt" not in ckpt and ckpt["step"] == 5
    model, cfg, _ = checkpoint.load_model(fv / "checkpoint.pt")  # what `bcvae eval` reads
    assert cfg.loss.objective == "factor" and sum(p.numel() for p in model.parameters()) > 0

    cut = unpack(tmp_path, "cut", tmp_path / "back")
    assert not (cut / "checkpoint.pt").exists()
    assert (cut / "metrics.jsonl").stat().st_size > 0


def test_with_part_bytes_an_unfinished_factorvae_comes_back_whole_in_parts_and_resumes(tmp_path):
    extra = (f"data.subset=2000 train.epochs=1000 data.cache_dir={tmp_path / 'data'} "
             "log.wandb_mode=disabled log.progress=false eval.at_end=false")
    r = gpu_runs(tmp_path, 20, "fv=factorvae:0", PART_BYTES="20M", EXTRA=extra)
    assert r.returncode == 0, r.stdout + r.stderr
    parts = sorted((tmp_path / "out").glob("fv.tar.gz.part*"))
    assert [p.name for p in parts] == ["fv.tar.gz.part00", "fv.tar.gz.part01", "fv.tar.gz.part02"]
    assert all(p.stat().st_size <= 20 * 2**20 for p in parts)
    assert not (tmp_path / "out" / "fv.tar.gz").exists()
    assert "fv: packed in 3 parts of at most 20M" in (tmp_path / "out" / "gpu_runs.log").read_text()

    (tmp_path / "out" / "fv.tar.gz").write_bytes(b"".join(p.read_bytes() for p in parts))
    fv = unpack(tmp_path, "fv", tmp_path / "back")
    from bcvae import checkpoint

    ckpt = checkpoint.load_checkpoint(fv / "checkpoint.pt")
    assert "disc" in ckpt and "disc_opt" in ckpt  # nothing cut: the discriminator resumes too
    stopped = ckpt["step"]
    r = gpu_runs(tmp_path, 120, f"fv=factorvae:0:{stopped + 3}", RUNS=str(tmp_path / "back"),
                 RESULTS=str(tmp_path / "out2"), EXTRA=extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming {fv / 'checkpoint.pt'} at step {stopped}" in (fv.parent / "train.log").read_text()
    assert step_of(fv) == stopped + 3
