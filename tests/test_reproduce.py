"""`bcvae reproduce`: results rows carry every required key; the table is mean ± std."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcvae import reproduce

REQUIRED = {"experiment", "objective", "seed", "budget", "recon_nll", "kl", "mig", "factor_vae_score",
            "beta_vae_score", "dci_disentanglement", "sap"}


def test_rows_from_a_real_run(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "METRICS", ("mig", "sap"))  # the classifier scores take minutes
    row = reproduce.evaluate_run(smoke_run, "smoke", 0, "test", num_points=500)
    assert REQUIRED <= set(row)
    summary = json.loads((smoke_run / "summary.json").read_text())
    # smoke validates on its whole 200-image fold: the same images, another noise draw
    assert row["recon_nll"] == pytest.approx(summary["val/rec"], rel=0.05)
    assert row["kl"] == pytest.approx(summary["val/kl"], rel=0.05)
    assert 0 <= row["mig"] <= 1 and row["objective"] == "capacity"
    assert all(isinstance(latent, int) for latent, _ in row["switch_on_order"])
    assert {d["latent"] for d in row["latent_factors"]} == set(range(10))
    assert reproduce.evaluate_run(smoke_run, "smoke", 0, "test", num_points=500) == row  # cached row
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


def test_a_stray_word_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce, "train_one", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(SystemExit) as exc:
        reproduce.main(["--seeds", "0", "1", "2"])  # space-separated seeds: "1", "2" become overrides
    assert exc.value.code == 2
    assert "override '1' must look like key=value" in capsys.readouterr().err
