"""`bcvae eval` pieces: whole-dataset encoding order, held-out loss, the CLI on a smoke run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import torch

from bcvae import encode, evaluate
from bcvae.data import load_all, render_dsprites
from conftest import ROOT


def test_encode_all_returns_file_order(smoke_run):
    model, cfg, _ = evaluate.load_model(smoke_run / "checkpoint.pt")
    data = load_all(cfg.data)
    mu, logvar = encode.encode_all(model, data, torch.device("cpu"), batch_size=256)
    order = np.argsort(data.index)
    images = render_dsprites(data.factors[order])  # independent of the cache
    with torch.no_grad():
        expect_mu, expect_logvar = model.encode(torch.from_numpy(images).float().unsqueeze(1))
    assert np.allclose(mu, expect_mu.numpy(), atol=1e-4) and np.allclose(logvar, expect_logvar.numpy(), atol=1e-4)


def test_heldout_loss_covers_the_held_out_fold(smoke_run):
    terms = evaluate.heldout_loss(smoke_run / "checkpoint.pt")
    assert {"val/rec", "val/kl", "val/loss"} <= set(terms)
    assert np.isclose(terms["val/kl"], sum(terms[f"val/kl_dim/{i}"] for i in range(10)), rtol=1e-5)


def test_heldout_batches_mix_the_sorted_fold_whatever_the_order_given(smoke_run):
    # The fold is stored sorted by factors; the batch estimators (MI, TC) need each batch to be
    # a uniform sample, so a batch must not be a run of neighbouring images.
    from bcvae.data import load_split

    model, cfg, ckpt = evaluate.load_model(smoke_run / "checkpoint.pt")
    cfg.train.val_batch_size = 50
    val = load_split(cfg.data).val
    assert (np.diff(val.factors[:, 1]) >= 0).all()                # stored sorted: shape first

    def run(indices):
        batches = []
        terms = evaluate.heldout_terms(model, None, val, indices, cfg, ckpt["step"], torch.device("cpu"),
                                       seed=3, dataset_size=1800, on_batch=lambda j, x, idx: batches.append(idx))
        return terms, batches

    terms, batches = run(np.arange(len(val)))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(val)))  # every image once
    assert all(len(set(val.factors[idx, 1])) == 3 for idx in batches)         # every batch holds every shape
    again, batches_again = run(np.arange(len(val))[::-1])
    assert again == terms and all((a == b).all() for a, b in zip(batches, batches_again))


def _eval(run, *args):
    proc = subprocess.run([sys.executable, "-m", "bcvae", "eval", str(run), "--no-wandb", "--num-points", "500", *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads((run / "eval.json").read_text())


def _unevaluated_copy(smoke_run, tmp_path):
    """The smoke run without the evaluation its training wrote (other settings than ``_eval``'s)."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    return run


def test_eval_cli_writes_json_and_logs_to_the_run(smoke_run, tmp_path):
    run = _unevaluated_copy(smoke_run, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bcvae", "eval", str(run), "--metrics", "mig,sap",
                           "--num-points", "500"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mig" in proc.stdout and "sap" in proc.stdout
    result = json.loads((run / "eval.json").read_text())
    assert set(result["scores"]) >= {"mig", "sap"} and result["settings"]["num_points"] == 500
    import wandb_records

    rows = wandb_records.history(run)
    assert any("eval/mig" in r and r["_step"] == result["step"] for r in rows)


def test_eval_of_a_few_metrics_keeps_the_others_of_the_same_step_and_sampling(smoke_run, tmp_path):
    run = _unevaluated_copy(smoke_run, tmp_path)
    _, first = _eval(run, "--metrics", "mig,sap")
    out, second = _eval(run, "--metrics", "sap")
    assert "kept its earlier mig" in out
    assert second["scores"]["mig"] == first["scores"]["mig"]          # not re-run, kept
    assert second["scores"]["sap"] == first["scores"]["sap"]          # re-run with the same points: same score
    assert set(second["settings"]) >= {"mig", "sap"} and set(second["seconds"]) >= {"mig", "sap"}
    # Another sampling seed draws other points: they go beside the record, which stays whole.
    out, third = _eval(run, "--metrics", "sap", "--seed", "3")
    assert "eval_rerun.json" in out and "stays as it is" in out
    assert third == second
    rerun = json.loads((run / "eval_rerun.json").read_text())
    assert set(rerun["scores"]) == {"sap"} and rerun["settings"]["seed"] == 3
    out, _ = _eval(run, "--metrics", "mig", "--seed", "3")          # the re-run file merges by the same rule
    assert "kept its earlier sap" in out
    assert set(json.loads((run / "eval_rerun.json").read_text())["scores"]) >= {"mig", "sap"}


def test_eval_of_a_newer_step_replaces_the_record(smoke_run, tmp_path):
    run = _unevaluated_copy(smoke_run, tmp_path)
    _, first = _eval(run, "--metrics", "mig,sap")
    stale = {**first, "step": first["step"] - 1, "settings": {**first["settings"], "seed": 7}}
    (run / "eval.json").write_text(json.dumps(stale))
    out, second = _eval(run, "--metrics", "sap")
    assert "replacing an evaluation of another step or sampling" in out
    assert set(second["scores"]) == {"sap"} and second["step"] == first["step"]
    assert not (run / "eval_rerun.json").exists()


def test_merge_evaluations_keeps_nothing_of_another_step():
    old = {"step": 5, "scores": {"mig": 0.1}, "settings": {"seed": 0, "num_points": 500}, "seconds": {}, "notes": []}
    new = {"step": 6, "scores": {"sap": 0.2}, "settings": {"seed": 0, "num_points": 500}, "seconds": {}, "notes": []}
    assert evaluate.merge_evaluations(old, new) == new
    assert evaluate.merge_evaluations({**old, "step": 6}, new)["scores"] == {"mig": 0.1, "sap": 0.2}
    assert evaluate.merge_evaluations(None, new) == new
    assert evaluate.merge_evaluations({"kept": True}, new) == new    # not an evaluation: replaced
