"""pretrained/<experiment>: weights exported from a run load back exactly, are checked
against their recorded sha256, never unpickle objects, and work with eval, plots and
the notebooks."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bcvae import checkpoint, evaluate, plots
from bcvae.errors import CheckpointError
from conftest import ROOT, params


@pytest.fixture(scope="module")
def pretrained(smoke_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained") / "smoke"
    evaluate.export(smoke_run, out)
    return out


def test_export_writes_weights_config_eval_log_and_sums(pretrained, smoke_run):
    names = {p.name for p in pretrained.iterdir()}
    assert names == {"model.pt", "config.yaml", "eval.json", "metrics.jsonl", "info.json", "sha256"}
    for p in pretrained.iterdir():
        assert p.stat().st_size < 2 * 2**20, p
    state = torch.load(pretrained / "model.pt", weights_only=True)
    run_state = params(smoke_run)
    assert state.keys() == run_state.keys()  # model state only: no optimiser, no discriminator
    for key in state:
        assert torch.equal(state[key], run_state[key])
        assert not state[key].is_floating_point() or state[key].dtype == torch.float32
    assert json.loads((pretrained / "eval.json").read_text()) == json.loads((smoke_run / "eval.json").read_text())
    lines = (pretrained / "sha256").read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split("  ")[0]) == 64 for line in lines)
    if shutil.which("sha256sum"):  # the file is in the standard tool's format
        subprocess.run(["sha256sum", "--quiet", "-c", "sha256"], cwd=pretrained, check=True)


def test_export_under_the_experiments_name_keeps_the_model_and_its_source(smoke_run, tmp_path):
    """``--name``: a seed trained as ``<exp>-seed1`` is exported as ``pretrained/<exp>``; only the
    config's name changes, and info.json still names the run it came from."""
    from bcvae import cli

    out = tmp_path / "renamed"
    assert cli.main(["export", str(smoke_run), str(out), "--name", "renamed"]) == 0
    model, cfg, ckpt = evaluate.load_model(evaluate.checkpoint_path(out))
    ref, ref_cfg, _ = evaluate.load_model(smoke_run / "checkpoint.pt")
    assert cfg.name == "renamed" != ref_cfg.name
    assert dataclasses.replace(cfg, name=ref_cfg.name) == ref_cfg
    assert json.loads((out / "info.json").read_text())["source_run"] == str(smoke_run)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref.state_dict()[key])
    assert cli.main(["export", str(smoke_run), str(tmp_path / "bad"), "--name", "../up"]) == 2
    assert not (tmp_path / "bad").exists()


def test_pretrained_loads_to_the_same_model(pretrained, smoke_run):
    model, cfg, ckpt = evaluate.load_model(evaluate.checkpoint_path(pretrained))
    ref, ref_cfg, ref_ckpt = evaluate.load_model(smoke_run / "checkpoint.pt")
    assert cfg == ref_cfg and ckpt["step"] == ref_ckpt["step"]
    x = torch.rand(4, 1, 64, 64)
    torch.testing.assert_close(model.encode(x)[0], ref.encode(x)[0], rtol=0, atol=0)


def test_a_changed_byte_is_refused(pretrained, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(pretrained, copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[-100] ^= 1
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.pt does not match its recorded sha256"):
        checkpoint.load_pretrained(copy)


def test_a_pickled_object_is_never_unpickled_even_with_a_matching_sum(pretrained, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(pretrained, copy)
    (copy / "model.pt").write_bytes(pickle.dumps({"x": Path("/etc/passwd")}))
    sums = (copy / "sha256").read_text().splitlines()
    sums[0] = f"{checkpoint._sha256(copy / 'model.pt')}  model.pt"   # an attacker can fix the sum too
    (copy / "sha256").write_text("\n".join(sums) + "\n")
    with pytest.raises(CheckpointError, match="not a readable state dict"):
        checkpoint.load_pretrained(copy)


def test_eval_of_a_pretrained_directory_keeps_the_recorded_result(pretrained, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(pretrained, copy)
    recorded = (copy / "eval.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "bcvae", "eval", str(copy), "--metrics", "mig",
                           "--num-points", "500"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "eval.json").read_text() == recorded
    assert "mig" in json.loads((copy / "eval_rerun.json").read_text())["scores"]


def test_plots_of_a_pretrained_directory(pretrained, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(pretrained, copy)
    names = {p.name for p in plots.write_run_plots(copy, images_per_factor=256)}
    assert {"traversals.png", "information.png", "kl_emergence.png"} <= names


def test_history_thinning_keeps_validation_rows_and_the_last_step():
    rows = [{"step": s, "train/loss": 1.0, "train/kl": 2.0} for s in range(1, 1001)]
    rows += [{"step": s, "val/loss": 3.0} for s in (500, 1000)]
    thin = checkpoint._thin_history(rows, max_bytes=5000)
    assert sum(len(json.dumps(r)) + 1 for r in thin) <= 5000 + 100
    assert [r["step"] for r in thin if "val/loss" in r] == [500, 1000]
    train = [r["step"] for r in thin if "train/loss" in r]
    assert train[0] == 1 and train[-1] == 1000 and len(train) > 50
    assert checkpoint._thin_history(rows, max_bytes=10**9) == rows


def test_export_refuses_a_stale_eval(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("wandb", "plots"))
    result = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**result, "step": 3}))
    with pytest.raises(CheckpointError, match="eval.json is of step 3"):
        evaluate.export(run, tmp_path / "out")
