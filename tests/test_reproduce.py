"""`bcvae reproduce`: results rows carry every required key; the table is mean ± std."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bcvae import latents, reproduce, track
from bcvae.checkpoint import load_model
from bcvae.encode import make_encode

REQUIRED = {"experiment", "objective", "seed", "budget", "recon_nll", "kl", "mig", "factor_vae_score",
            "beta_vae_score", "dci_disentanglement", "dci_informativeness", "sap"}


def test_rows_from_a_real_run(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "METRICS", ("mig", "sap"))  # the classifier scores take minutes
    row = reproduce.evaluate_run(smoke_run, "smoke", 0, "test", num_points=500)
    assert REQUIRED <= set(row)
    summary = json.loads((smoke_run / "summary.json").read_text())
    # smoke validates on its whole 200-image fold: the same images, another noise draw
    assert row["recon_nll"] == pytest.approx(summary["val/rec"], rel=0.05)
    assert row["kl"] == pytest.approx(summary["val/kl"], rel=0.05)
    assert 0 <= row["mig"] <= 1 and row["objective"] == "capacity"
    cfg = load_model(smoke_run / "checkpoint.pt")[1]
    log = track.read_jsonl(smoke_run / "metrics.jsonl")
    assert row["switch_on_order"] == latents.switch_on_summary(log, cfg.loss)["switch_on_order"]
    assert all(isinstance(on["latent"], int) and isinstance(on["step"], int) for on in row["switch_on_order"])
    assert {d["latent"] for d in row["latent_factors"]} == set(range(10))
    assert reproduce.evaluate_run(smoke_run, "smoke", 0, "test", num_points=500) == row  # cached row
    # Other metric code (a changed estimator) scores again instead of reusing the cached row.
    from bcvae import evaluate

    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored")))
    monkeypatch.setattr(reproduce, "metrics_code_digest", lambda: "other metric code")
    with pytest.raises(AssertionError, match="scored"):
        reproduce.evaluate_run(smoke_run, "smoke", 0, "test", num_points=500)
    reproduce.write_results([row], tmp_path, "test")
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved[0]["experiment"] == "smoke" and REQUIRED <= set(saved[0])
    assert (tmp_path / "test_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| smoke | capacity | 1 |" in (tmp_path / "test.md").read_text()


def test_table_is_mean_and_sample_std_over_seeds():
    rows = [dict.fromkeys(REQUIRED, None) | {"experiment": "e", "objective": "beta", "seed": s,
                                               "mig": m, "recon_nll": r}
            for s, m, r in [(0, 0.1, 30.0), (1, 0.3, 32.0), (2, 0.2, 31.0)]]
    table = reproduce.markdown_table(rows)
    line = next(l for l in table.splitlines() if l.startswith("| e |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["e", "beta", "3"]
    assert cells[3] == f"{31.0:.1f} ± {np.std([30, 32, 31], ddof=1):.1f}"
    assert cells[5] == f"{0.2:.3f} ± {np.std([0.1, 0.3, 0.2], ddof=1):.3f}"
    assert cells[4] == "–"  # no KL values given
    assert "–: not in these rows" in table


def test_table_says_when_only_some_seeds_hold_a_score():
    rows = [dict.fromkeys(REQUIRED, None) | {"experiment": "e", "objective": "beta", "seed": s, "recon_nll": 30.0,
                                               "kl": 5.0, "mig": m}
            for s, m in [(0, 0.1), (1, None), (2, 0.3)]]
    columns = [c[0] for c in reproduce.COLUMNS]
    for row in rows:
        row.update({key: 0.5 for key in columns if key not in ("recon_nll", "kl", "mig")})
    table = reproduce.markdown_table(rows)
    line = next(l for l in table.splitlines() if l.startswith("| e |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3 + columns.index("mig")] == f"{0.2:.3f} ± {np.std([0.1, 0.3], ddof=1):.3f} (2 of 3 seeds)"
    assert cells[3 + columns.index("sap")] == "0.500 ± 0.000"
    assert "not in these rows" in table
    for row in rows:
        row["mig"] = 0.2
    assert "not in these rows" not in reproduce.markdown_table(rows)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0", "1", "2"], "override '1' must look like key=value"),   # space-separated seeds
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--seeds", "-1"], "--seeds must be integers in 0..4294967295"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--num-points", "5"], "--num-points must be >= 100"),
    (["--experiments", "nosuch"], "experiments/nosuch.yaml: experiment file not found"),
    (["--experiments", "beta4_cpu", "train.lr=-1"], "train.lr"),
    (["--experiments", "beta4_cpu", "--seeds", "7", "--no-train"], "--no-train: no trained run at"),
    (["--experiments", "beta4_cpu", "--seeds", "0,1", "--run-name", "{experiment}"], "names several runs 'beta4_cpu'"),
    (["--experiments", "beta4_cpu", "--run-name", "{exp}-{seed}"], "--run-name '{exp}-{seed}' is not a pattern"),
    (["--experiments", "beta4_cpu", "--seeds", "0", "--run-name", "a/b"], "name"),
    (["--rescore-latents", "--out", "nowhere"], "--rescore-latents: no rows in nowhere/cpu.json"),
], ids=["spaced-seeds", "letters", "negative", "jobs", "points", "unknown-experiment", "bad-override", "no-runs",
        "name-clash", "name-field", "name-path", "rescore-nothing"])
def test_every_mistake_is_refused_in_one_line_before_any_training(tmp_path, monkeypatch, capsys, args, message):
    from bcvae import cli
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.setattr(reproduce, "train_one", lambda *a, **k: pytest.fail("training started"))
    assert cli.main(["reproduce", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


def _project_with_runs(tmp_path, monkeypatch, names):
    """A project in ``tmp_path`` with trained (empty) runs ``runs/<name>/fold0``; evaluation and
    writing are recorded instead of done. Returns (evaluated run directories, rows written)."""
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    for name in names:
        (tmp_path / "runs" / name / "fold0").mkdir(parents=True)
        (tmp_path / "runs" / name / "fold0" / "checkpoint.pt").write_bytes(b"")
    seen, written = [], []
    monkeypatch.setattr(reproduce, "evaluate_run", lambda d, e, s, *a: seen.append((d, e, s)) or
                        {"experiment": e, "seed": s, "run": d.parent.name})
    monkeypatch.setattr(reproduce, "write_results", lambda rows, out, budget: written.append(rows))
    return seen, written


def test_no_train_finds_the_runs_of_make_train_by_run_name(tmp_path, monkeypatch):
    """``--run-name {experiment}`` evaluates ``runs/<experiment>/fold0`` (what ``make train`` writes)."""
    from bcvae import cli

    seen, _ = _project_with_runs(tmp_path, monkeypatch, ("beta4_cpu", "capacity25_cpu"))
    assert cli.main(["reproduce", "--experiments", "beta4_cpu,capacity25_cpu", "--seeds", "0", "--no-train",
                     "--run-name", "{experiment}"]) == 0
    assert seen == [(tmp_path / "runs" / "beta4_cpu" / "fold0", "beta4_cpu", 0),
                    (tmp_path / "runs" / "capacity25_cpu" / "fold0", "capacity25_cpu", 0)]
    assert cli.main(["reproduce", "--experiments", "beta4_cpu", "--seeds", "0", "--no-train"]) == 2  # no beta4_cpu-seed0


def test_merge_keeps_other_pairs_replaces_the_evaluated_ones_and_orders_by_budget():
    kept = [{"experiment": "a", "seed": 0, "v": "old"}, {"experiment": "b", "seed": 0, "v": "old"},
            {"experiment": "a", "seed": 1, "v": "old"}]
    new = [{"experiment": "c", "seed": 0, "v": "new"}, {"experiment": "a", "seed": 1, "v": "new"}]
    merged = reproduce.merge_rows(kept, new, order=["b", "a"])
    assert [(r["experiment"], r["seed"], r["v"]) for r in merged] == [
        ("b", 0, "old"), ("a", 0, "old"), ("a", 1, "new"), ("c", 0, "new")]
    assert reproduce.merge_rows([], new, order=[]) == new  # experiments outside the order: as they come


def test_keep_rows_puts_seeds_of_differently_named_runs_in_one_table(tmp_path, monkeypatch):
    from bcvae import cli

    _, written = _project_with_runs(tmp_path, monkeypatch, ("beta4_cpu", "capacity25_cpu-seed1"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(
        [{"experiment": "beta4_cpu", "seed": 0, "run": "beta4_cpu"},
         {"experiment": "capacity25_cpu", "seed": 1, "run": "stale"}]))
    assert cli.main(["reproduce", "--experiments", "capacity25_cpu", "--seeds", "1", "--no-train",
                     "--keep-rows"]) == 0
    assert [(r["experiment"], r["seed"], r["run"]) for r in written[-1]] == [
        ("capacity25_cpu", 1, "capacity25_cpu-seed1"), ("beta4_cpu", 0, "beta4_cpu")]  # budget order
    assert cli.main(["reproduce", "--experiments", "capacity25_cpu", "--seeds", "1", "--no-train"]) == 0
    assert [r["experiment"] for r in written[-1]] == ["capacity25_cpu"]  # without the flag: this run's rows only


@pytest.mark.parametrize("content, message", [
    ("{not json", "--keep-rows: cannot read results/cpu.json"),
    ('{"rows": []}', "--keep-rows: results/cpu.json is not a list of results rows"),
    ('[{"experiment": "beta4_cpu"}]', "--keep-rows: results/cpu.json is not a list of results rows"),
], ids=["torn", "object", "no-seed"])
def test_keep_rows_refuses_a_file_it_cannot_merge_before_evaluating(tmp_path, monkeypatch, capsys, content, message):
    from bcvae import cli

    _, written = _project_with_runs(tmp_path, monkeypatch, ("beta4_cpu", "capacity25_cpu-seed1"))
    monkeypatch.setattr(reproduce, "evaluate_run", lambda *a: pytest.fail("evaluated before the file was checked"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu.json").write_text(content)
    assert cli.main(["reproduce", "--experiments", "capacity25_cpu", "--seeds", "1", "--no-train", "--keep-rows"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert written == []
    assert cli.main(["reproduce", "--rescore-latents"]) == 2  # the same file, read by the other option
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.replace("--keep-rows", "--rescore-latents") in err[0], err
    assert written == []


def test_a_kept_row_whose_run_is_gone_draws_its_curves_from_the_model_exported_from_that_run(tmp_path):
    exported = tmp_path / "pretrained" / "capacity25"
    exported.mkdir(parents=True)
    (exported / "info.json").write_text(json.dumps({"step": 900, "source_run": "runs/capacity25/fold0"}))
    (exported / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train/rec": 500.0 - s / 10, "train/kl": s / 100}) + "\n" for s in (100, 500, 900)))
    row = {"experiment": "capacity25", "seed": 0, "steps": 900, "run_dir": "/another/machine/runs/capacity25/fold0"}
    pretrained = tmp_path / "pretrained"
    assert reproduce.history_dir(row, pretrained) == exported
    assert reproduce.history_dir({**row, "steps": 800}, pretrained) is None  # a later export of a longer run
    assert reproduce.history_dir({**row, "run_dir": "/m/runs/capacity25-seed1/fold0"}, pretrained) is None
    here = tmp_path / "runs" / "capacity25" / "fold0"
    here.mkdir(parents=True)
    (here / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/rec": 1.0}) + "\n")
    assert reproduce.history_dir({**row, "run_dir": str(here)}, pretrained) == here  # the run itself first
    path = reproduce.write_seeds_figure([row], tmp_path / "curves.png", pretrained)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reproduce.write_seeds_figure([{**row, "steps": 800}], tmp_path / "none.png", pretrained) is None


def test_a_figure_is_not_redrawn_without_the_curves_of_rows_whose_logs_are_gone(tmp_path, caplog):
    here = tmp_path / "runs" / "beta4_cpu-seed2" / "fold0"
    here.mkdir(parents=True)
    (here / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/rec": 1.0, "train/kl": 1.0}) + "\n")
    kept = {"experiment": "beta4_cpu", "seed": 0, "steps": 900, "run_dir": "/another/machine/runs/beta4_cpu-seed0/fold0"}
    new = {"experiment": "beta4_cpu", "seed": 2, "steps": 1, "run_dir": str(here)}
    path = tmp_path / "cpu_curves.png"
    path.write_bytes(b"the figure of every seed")
    with caplog.at_level("WARNING"):
        assert reproduce.write_seeds_figure([kept, new], path, tmp_path / "pretrained") is None
    assert path.read_bytes() == b"the figure of every seed"
    assert "beta4_cpu seed 0" in caplog.text and "kept as it was" in caplog.text
    assert reproduce.write_seeds_figure([new], path, tmp_path / "pretrained") == path  # every log here: redrawn
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rescoring_takes_the_model_from_the_run_or_its_export_and_keeps_the_rows_it_cannot(smoke_run, tmp_path,
                                                                                           monkeypatch):
    from bcvae import evaluate

    step = load_model(smoke_run / "checkpoint.pt")[2]["step"]
    monkeypatch.setattr(latents, "FACTOR_IMAGES", 64)  # the smoke encoder needs no precision
    old = [{"latent": 0, "factor": "shape", "score": 1.0}]
    here = {"experiment": "smoke", "seed": 0, "steps": step, "run_dir": str(smoke_run), "latent_factors": old}
    moved_on = {**here, "seed": 1, "steps": step + 1}  # the run trained on since: not the row's model
    pretrained = tmp_path / "pretrained"
    copy = tmp_path / "runs" / "exported" / "fold0"
    shutil.copytree(smoke_run, copy)
    evaluate.export(copy, pretrained / "exported")
    (copy / "checkpoint.pt").unlink()  # the run is gone, its export is here
    exported = {**here, "experiment": "exported", "seed": 2, "run_dir": str(copy)}
    gone = {**exported, "experiment": "gone", "seed": 3}
    rows = [dict(r) for r in (here, moved_on, exported, gone)]
    left = reproduce.rescore_latents(rows, pretrained)
    assert [(r["experiment"], r["seed"]) for r in left] == [("smoke", 1), ("gone", 3)]
    model = load_model(smoke_run / "checkpoint.pt")[0]
    fresh = latents.latent_factor_table(make_encode(model, next(model.parameters()).device), images_per_factor=64)
    for r in (rows[0], rows[2]):
        assert r["latent_factor_images_per_factor"] == 64
        assert [(d["latent"], d["factor"]) for d in r["latent_factors"]] == [(d["latent"], d["factor"]) for d in fresh]
        assert [d["score"] for d in r["latent_factors"]] == pytest.approx([d["score"] for d in fresh])
    assert rows[1]["latent_factors"] == old and "latent_factor_images_per_factor" not in rows[1]
    assert rows[3]["latent_factors"] == old


def test_the_latent_report_marks_tables_from_the_older_smaller_sample():
    on = [{"latent": 0, "step": 5}]
    table = [{"latent": 0, "factor": "posX", "score": 0.9}]
    row = {"experiment": "e", "objective": "capacity", "seed": 0, "switch_on_order": on, "latent_factors": table}
    report = reproduce.latent_report([{**row, "latent_factor_images_per_factor": latents.FACTOR_IMAGES},
                                      {**row, "seed": 1}])
    assert report.splitlines() == ["- e seed 0: z0@5 → posX (0.90)",
                                   "- e seed 1: z0@5 → posX (0.90) (η² from 32 images per value: ± 0.1)"]


def test_a_latent_that_follows_several_factors_about_equally_names_them_all():
    mixed = {"latent": 2, "factor": "posY", "score": 0.32,
             "scores": {"shape": 0.05, "scale": 0.31, "orientation": 0.0, "posX": 0.28, "posY": 0.32}}
    clean = {"latent": 3, "factor": "posY", "score": 0.92,
             "scores": {"shape": 0.0, "scale": 0.0, "orientation": 0.0, "posX": 0.03, "posY": 0.92}}
    assert reproduce.factor_label(mixed) == "posY/scale/posX (0.32/0.31/0.28)"
    assert reproduce.factor_label(clean) == "posY (0.92)"
    assert reproduce.factor_label({"latent": 0, "factor": "scale", "score": 0.5}) == "scale (0.50)"
    assert reproduce.factor_label(None) == "? (nan)"
