"""The plateau study's summary of a training log, checked on hand-made logs."""

from __future__ import annotations

import json

import pytest

from bcvae import plateau


def _row(step, rec, kl, c, mi):
    return {"step": step, "train/rec": rec, "train/kl": kl, "train/C": c, "train/mi": mi}


def test_a_run_that_never_leaves_the_plateau():
    rows = [_row(s, 570.0, 0.01 * s, 0.01 * s, 0.0) for s in (50, 100, 150)]
    out = plateau.exit_summary(rows)
    assert out["exit_step"] is None and out["max_overshoot_after"] is None
    assert (out["steps"], out["final_rec"], out["final_kl"], out["final_C"], out["final_mi"]) == (150, 570.0, 1.5, 1.5, 0.0)


def test_exit_step_information_there_and_the_gap_after_it():
    rows = [_row(100, 560.0, 3.0, 0.1, 0.0),      # a large KL − C before the exit does not count
            _row(50, 571.0, 0.05, 0.05, 0.0),     # rows may come unordered
            _row(150, 480.0, 0.9, 0.15, 0.7),     # first NLL < 500: the exit
            _row(200, 400.0, 0.1, 0.2, 0.1),      # KL 0.1 below C
            _row(250, 380.0, 0.6, 0.25, 0.5),
            {"step": 250, "val/rec": 390.0}]      # validation rows are ignored
    out = plateau.exit_summary(rows)
    assert out["exit_step"] == 150 and out["mi_at_exit"] == 0.7
    assert (out["kl_at_exit"], out["C_at_exit"]) == (0.9, 0.15)
    assert out["max_overshoot_after"] == pytest.approx(0.75)
    assert out["max_abs_gap_after"] == pytest.approx(0.75)
    assert out["settled_step"] == 150                   # within 1 nat from the exit on
    rows.append(_row(300, 370.0, 0.0, 1.3, 0.0))  # 1.3 below C: |KL − C| grows, overshoot does not
    out = plateau.exit_summary(rows)
    assert out["max_overshoot_after"] == pytest.approx(0.75) and out["max_abs_gap_after"] == pytest.approx(1.3)
    assert out["settled_step"] is None                  # the last row is 1.3 nats off
    rows.append(_row(350, 360.0, 1.0, 1.4, 0.9))
    assert plateau.exit_summary(rows)["settled_step"] == 350


def test_a_large_gap_right_after_the_exit_delays_settling():
    rows = [_row(50, 480.0, 6.0, 0.1, 4.0), _row(100, 420.0, 2.5, 0.2, 2.0), _row(150, 400.0, 0.5, 0.3, 0.5),
            _row(200, 390.0, 0.6, 0.4, 0.6)]
    out = plateau.exit_summary(rows)
    assert (out["exit_step"], out["settled_step"]) == (50, 150)
    assert out["max_overshoot_after"] == pytest.approx(5.9)


def test_a_run_that_falls_back_onto_the_plateau_leaves_only_when_it_stays_off():
    rows = [_row(50, 560.0, 0.1, 0.1, 0.0), _row(100, 450.0, 8.0, 0.1, 5.0),   # dips below 500 ...
            _row(150, 570.0, 0.2, 0.2, 0.0),                                    # ... and falls back
            _row(200, 490.0, 0.3, 0.3, 0.2), _row(250, 400.0, 0.4, 0.4, 0.4)]
    out = plateau.exit_summary(rows)
    assert (out["exit_step"], out["mi_at_exit"]) == (200, 0.2)
    assert out["max_overshoot_after"] == pytest.approx(0.0)


def test_an_empty_log_is_an_error():
    with pytest.raises(ValueError, match="no training rows"):
        plateau.exit_summary([{"step": 10, "val/rec": 1.0}])


def test_table_numbers_that_round_to_zero_print_without_a_sign():
    # On the plateau the MI estimate scatters around 0 (e.g. -0.003): the table shows 0.00.
    assert plateau._fmt(-0.003, ".2f") == "0.00"
    assert plateau._fmt(0.004, ".2f") == "0.00"
    assert plateau._fmt(-0.5, ".2f") == "-0.50"
    assert plateau._fmt(None, ".2f") == "–"


def test_every_row_names_the_command_that_trains_it():
    assert plateau.command("gamma100", 1, 8000) == \
        'make train EXP=capacity25_paper ARGS="seed=1 train.max_steps=8000 loss.gamma=100"'
    assert plateau.command("gamma1000", 0, 8000) == 'make train EXP=capacity25_paper ARGS="seed=0 train.max_steps=8000"'
    from bcvae import config
    from conftest import ROOT

    for key, (_, overrides) in plateau.ROWS.items():  # every row's overrides are valid config
        config.load(ROOT / "experiments" / f"{plateau.EXPERIMENT}.yaml", overrides + plateau.QUIET)


def test_no_train_summarises_existing_runs_into_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / plateau.run_name("gamma100", 0) / "fold0"
    run.mkdir(parents=True)
    rows = [_row(50, 570.0, 0.0, 0.0, 0.0), _row(100, 450.0, 0.8, 0.1, 0.6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plateau.main(["--rows", "gamma100", "--seeds", "0", "--no-train"]) == 0
    result = json.loads((tmp_path / "results" / "plateau.json").read_text())
    assert result[0]["exit_step"] == 100 and result[0]["max_overshoot_after"] == pytest.approx(0.7)
    table = (tmp_path / "results" / "plateau.md").read_text()
    assert "| γ = 100 | 0 | 100 | 100 | 0.60 | 0.80 / 0.10 | 0.70 | 100 |" in table and "loss.gamma=100" in table


@pytest.mark.parametrize("args, message", [
    (["--rows", "bogus"], "unknown row 'bogus'"),
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--steps", "0"], "--steps and --jobs must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--rows", "gamma300", "--seeds", "7", "--no-train"], "no training log"),
])
def test_bad_arguments_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    from bcvae import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["plateau", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_figure_draws_each_run_as_a_row():
    rows = [_row(s, 570.0 - s, 0.01 * s, 0.01 * s, 0.005 * s) | {"train/marginal_kl": 0.005 * s} for s in (50, 100)]
    fig = plateau.figure({"a": rows, "b": rows})
    assert len(fig.axes) == 4
    info = fig.axes[0]
    assert [line.get_label() for line in info.get_lines()] == ["KL", "I(x; z)", "KL(q(z) ‖ p(z))", "C"]
    assert list(info.get_lines()[1].get_ydata()) == [0.25, 0.5]
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == [520.0, 470.0]
    assert info.get_ylim() == (-0.2, 3.0)


def test_figure_axis_follows_a_long_ramp():
    """A run logged to C = 12.5 nats keeps its C and KL on the axes (3 nats would cut them off)."""
    rows = [_row(50_000, 570.0, 12.6, 12.5, 0.0)]
    info = plateau.figure({"long": rows}).axes[0]
    assert info.get_ylim() == pytest.approx((-0.2, 1.05 * 12.6))


def _summarise(tmp_path, key: str, seed: int, rec: float, *extra: str) -> list[dict]:
    """Write one run's two-row log, summarise it with ``bcvae plateau --no-train``, return the table rows."""
    run = tmp_path / "runs" / plateau.run_name(key, seed) / "fold0"
    run.mkdir(parents=True)
    rows = [_row(50, 570.0, 0.0, 0.0, 0.0), _row(100, rec, 0.8, 0.1, 0.6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plateau.main(["--rows", key, "--seeds", str(seed), "--no-train", *extra]) == 0
    return json.loads((tmp_path / "results" / "plateau.json").read_text())


def test_keep_rows_adds_new_rows_to_the_table_in_the_study_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _summarise(tmp_path, "clip100", 0, 450.0)
    assert [(r["row"], r["seed"]) for r in _summarise(tmp_path, "gamma100", 1, 450.0)] == [("gamma100", 1)]
    _summarise(tmp_path, "clip100", 1, 560.0, "--keep-rows")
    table = _summarise(tmp_path, "gamma1000", 0, 570.0, "--keep-rows")
    # kept rows stay; ROWS order, then seed, whatever order they were summarised in
    assert [(r["row"], r["seed"]) for r in table] == [("gamma1000", 0), ("gamma100", 1), ("clip100", 1)]
    md = (tmp_path / "results" / "plateau.md").read_text()
    assert md.index("| γ = 1000 (the paper) | 0 |") < md.index("| γ = 100 | 1 |") < md.index("clipped to 100 | 1 |")
    # summarising a (row, seed) again replaces its row rather than adding a second
    (tmp_path / "runs" / plateau.run_name("gamma100", 1) / "fold0" / "metrics.jsonl").write_text(
        json.dumps(_row(50, 400.0, 0.1, 0.1, 0.1)) + "\n")
    assert plateau.main(["--rows", "gamma100", "--seeds", "1", "--no-train", "--keep-rows"]) == 0
    again = json.loads((tmp_path / "results" / "plateau.json").read_text())
    assert [(r["row"], r["seed"], r["exit_step"]) for r in again] == [
        ("gamma1000", 0, None), ("gamma100", 1, 50), ("clip100", 1, None)]


@pytest.mark.parametrize("text,message", [
    ('{"rows": 3}', "is not a list of results rows with 'row' and 'seed'"),
    ('[{"experiment": "beta4", "seed": 0}]', "is not a list of results rows with 'row' and 'seed'"),  # reproduce's
    ('[{"row": "gamma100", "seed": 0}', "cannot read results/plateau.json"),
])
def test_keep_rows_refuses_a_file_that_is_not_a_plateau_table(tmp_path, monkeypatch, capsys, text, message):
    from bcvae import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "plateau.json").write_text(text)
    run = tmp_path / "runs" / plateau.run_name("gamma100", 0) / "fold0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps(_row(50, 570.0, 0.0, 0.0, 0.0)) + "\n")
    assert cli.main(["plateau", "--rows", "gamma100", "--seeds", "0", "--no-train", "--keep-rows"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-rows:" in err[0] and message in err[0], err
    assert (tmp_path / "results" / "plateau.json").read_text() == text  # nothing lost
