"""benchmarks/peers.py (``make bench-peers``): its own logic without disent, and -- only in the peer
environment that ``make bench-peers`` builds (.venv-peers) -- that both libraries see the same network,
loss and metric estimators. The default install has no disent: those tests skip, and only when the
disent package is absent (any other import error fails)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from unittest import mock

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
with mock.patch.dict(os.environ):  # peers sets OMP_WAIT_POLICY for its own runs: not for this process
    import peers

from bcvae import metrics  # noqa: E402
from bcvae.data import FACTOR_SIZES, N_IMAGES  # noqa: E402

needs_disent = pytest.mark.skipif(importlib.util.find_spec("disent") is None,
                                  reason="disent is not installed: it lives in .venv-peers (make bench-peers)")


@pytest.fixture(scope="module")
def known():
    code = peers.KnownAnswerCode(n_noise=3, seed=0)
    return code, code.table()


def test_known_answer_code_copies_each_factor_into_its_own_latent(known):
    code, table = known
    assert table.shape == (N_IMAGES, 5 + 3)
    rng = np.random.default_rng(1)
    classes = metrics.sample_factors(500, rng)
    codes = code.code(classes)
    np.testing.assert_array_equal(codes, table[np.ravel_multi_index(classes.T, FACTOR_SIZES)])
    for j, col in enumerate(peers.VARYING):  # latent j is factor col, scaled to [0, 1]
        np.testing.assert_allclose(codes[:, j] * (FACTOR_SIZES[col] - 1), classes[:, col], atol=1e-9)
    # the noise depends on the image alone: one draw per image, independent of the factors
    np.testing.assert_array_equal(code.code(classes[:7]), codes[:7])
    assert abs(np.corrcoef(table[::97, 5], table[::97, 4])[0, 1]) < 0.02
    assert code.code(classes.reshape(50, 10, 6)).shape == (50, 10, 8)
    turned = peers.KnownAnswerCode(n_noise=3, seed=0, rotation=90.0).code(classes)  # posX -> posY, posY -> -posX
    np.testing.assert_allclose(turned[:, [3, 4]], np.stack([-codes[:, 4], codes[:, 3]], axis=1), atol=1e-12)
    np.testing.assert_array_equal(turned[:, [0, 1, 2, 5, 6, 7]], codes[:, [0, 1, 2, 5, 6, 7]])


def test_known_answers_are_the_population_values():
    ans = peers.known_answers()
    per = ans["mig_per_factor"]
    assert per["shape"] == pytest.approx(1.0) and per["scale"] == pytest.approx(1.0)
    assert per["orientation"] == pytest.approx(math.log(20) / math.log(40))  # two values per bin
    counts = np.histogram(np.linspace(0, 1, 32), bins=20)[0]  # 32 positions into 20 bins
    p = counts[counts > 0] / 32
    assert per["posX"] == pytest.approx(-(p * np.log(p)).sum() / math.log(32))
    assert per["posX"] == per["posY"]
    assert ans["mig"] == pytest.approx(np.mean(list(per.values())))
    assert ans["dci_disentanglement"] == ans["factor_vae"] == 1.0 and ans["sap"] is None


def test_bcvae_metrics_reach_the_known_answers_on_many_points(known):
    code, table = known
    classes = metrics.sample_factors(200_000, np.random.default_rng(2))
    assert metrics.mig(code.code(classes), classes) == pytest.approx(peers.known_answers()["mig"], abs=0.005)
    fv = metrics.factor_vae_details(metrics.CodeSource(codes_table=table), 0, num_train=60, num_eval=30,
                                    num_variance_estimate=500)
    assert fv["eval_accuracy"] == 1.0 and fv["num_active_dims"] == 8


def test_spread():
    s = peers.spread([3, 1, 2])
    assert (s["median"], s["min"], s["max"], s["rounds"]) == (2, 1, 3, [3, 1, 2])


def fake_result() -> dict:
    """A result dict shaped as peers.main writes it, with round numbers."""
    row = {"same_points": {"bcvae": 0.5, "disent": 0.5}, "known": 0.9,
           "own_sampling": {"bcvae": peers.spread([0.4, 0.6]), "disent": peers.spread([0.45])},
           "seconds": {"bcvae": 0.001, "disent": 0.25}}
    return {
        "command": "python benchmarks/peers.py", "date": "2026-12-03 01:00:00", "seconds_total": 300.0,
        "device": "Test CPU, 2 cores", "threads": 2, "load_average_start": 4.0, "load_average_end": 4.5,
        "disent": "0.8.0", "lightning": "2.6.6", "torch": "2.13.0+cpu",
        "train": {"beta": 4.0, "batch": 64, "rounds": 3, "steps": 100, "warmup": 10, "flops_per_image": 73.7e6,
                  "img_s": {"disent": peers.spread([400, 500, 450]), "bcvae_fast": peers.spread([900, 1000, 950])}},
        "metrics": {"sizes_note": "MIG 2000 points", "seeds": [1, 2],
                    "codes": {"known answer": {"values": {"mig": row, "factor_vae_active_dims": {"bcvae": [8]}},
                                               "render_encode_s": 0.0, "images_encoded": 0},
                              "trained encoder": {"values": {"mig": row}, "render_encode_s": 12.5,
                                                  "images_encoded": 40_000}}},
    }


def test_markdown_table_lists_every_variant_and_metric():
    text = peers.markdown_table(fake_result())
    lines = text.splitlines()
    disent = next(line for line in lines if line.startswith("| disent 0.8.0"))
    fast = next(line for line in lines if line.startswith("| bcvae Trainer step, defaults"))
    assert "| 450 (400–500) | 33.2 | 1.00× (1.00–1.00) |" in disent
    assert "| 950 (900–1000) | 70.0 | 2.11× (2.00–2.25) |" in fast  # per turn: 900/400, 1000/500, 950/450
    assert not any("eager" in line for line in lines)  # not measured, not listed
    mig = [line for line in lines if "| MIG |" in line]
    assert mig[0] == ("| known answer | MIG | 0.900 | 0.500 | 0.500 | 0.500 (0.400–0.600) | 0.450 | "
                      "1.0e-03 / 0.25 |")
    assert len(mig) == 2 and "40,000 images, 12.5 s" in text and "known answer 0" not in text
    assert "load average 4.0 at the start, 4.5 at the end" in text


def test_readme_block_is_replaced_between_the_markers_only(tmp_path):
    text = f"intro\n{peers.TABLE_START}\nold table\n{peers.TABLE_END}\nafter\n"
    new = peers.replace_block(text, "| new |\n")
    assert new == f"intro\n{peers.TABLE_START}\n| new |\n{peers.TABLE_END}\nafter\n"
    assert peers.replace_block(new, "| new |") == new  # idempotent
    with pytest.raises(ValueError, match="markers"):
        peers.replace_block("no markers here", "x")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    path = peers.write(fake_result(), tmp_path / "results", readme)
    assert json.loads(path.read_text())["train"]["img_s"]["disent"]["median"] == 450
    assert "| 450 (400–500) |" in readme.read_text() and "old table" not in readme.read_text()


def test_the_benchmarks_readme_has_the_markers():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert 0 <= text.find(peers.TABLE_START) < text.find(peers.TABLE_END)


# ---------------------------------------------------------------- in .venv-peers only


@pytest.fixture(scope="module")
def side():
    import disent_side

    return disent_side


@needs_disent
def test_disent_trains_our_network_with_our_objective(side):
    import torch

    from bcvae.config import LossConfig
    from bcvae.losses import vae_loss
    from bcvae.model import VAE

    torch.manual_seed(0)
    vae = VAE(10, "burgess")
    module = side.beta_vae(vae, beta=4.0, lr=5e-4)
    assert {id(p) for p in module.parameters()} == {id(p) for p in vae.parameters()}  # shared, not copied
    x = (torch.rand(8, 1, 64, 64) > 0.7).float()
    mu, logvar = vae.encode(x)
    posterior, prior = module.encode_dists(x)
    torch.testing.assert_close(posterior.loc, mu)
    torch.testing.assert_close(posterior.scale, torch.exp(0.5 * logvar))
    z = posterior.rsample()
    logits = module.decode_partial(z)
    torch.testing.assert_close(logits, vae.decode(z))
    rec, _ = module.compute_ave_recon_loss([logits], [x])
    reg, _ = module.compute_ave_reg_loss([posterior], [prior], [z])
    ours, terms = vae_loss(LossConfig(objective="beta", beta=4.0), x, logits, mu, logvar, z, 0)
    torch.testing.assert_close(rec, terms["rec"])
    torch.testing.assert_close(reg, 4.0 * terms["kl"])
    torch.testing.assert_close(rec + reg, ours)


@needs_disent
def test_disent_and_bcvae_estimators_agree_on_the_same_points(side, known):
    code, _ = known
    n = {"mig": 1000, "sap_train": 400, "sap_test": 200, "dci_train": 0, "dci_test": 0}
    classes = metrics.sample_factors(1000, np.random.default_rng(3))
    codes, factors = code.code(classes), classes[:, peers.VARYING]
    codes[:, 5] += 0.3 * codes[:, 3]  # a little entanglement, so the gaps are not trivial
    theirs = side.same_points(codes, factors, n, names=("mig", "sap"))
    ours = peers._ours_on_points(codes, factors, n, names=("mig", "sap"))
    assert theirs["mig"][0]["mig.discrete_score"] == pytest.approx(ours["mig"][0]["mig"], abs=1e-12)
    assert theirs["sap"][0]["sap.score"] == pytest.approx(ours["sap"][0]["sap"], abs=0.01)


@needs_disent
def test_disent_metrics_read_the_shared_code_source(side, known):
    _, table = known
    source = metrics.CodeSource(codes_table=table)
    out, seconds = side.sampled("factor_vae", source, 0, {"num_train": 30, "num_eval": 15,
                                                          "num_variance_estimate": 300})
    assert out["factor_vae.eval_accuracy"] == 1.0 and seconds >= 0
    data = side.ClassesData()
    assert data.factor_sizes == tuple(FACTOR_SIZES[1:]) and len(data) == N_IMAGES
    np.testing.assert_array_equal(data[12345], np.unravel_index(12345, FACTOR_SIZES[1:]))


@needs_disent
@pytest.mark.slow
def test_a_quick_run_races_both_loops_and_writes_its_result(tmp_path):
    r = peers.main(["--quick", "--no-readme", "--results", str(tmp_path)])
    t = r["train"]
    assert t["disent_global_step"] == t["bcvae_fast_steps"] == t["warmup"] + t["rounds"] * t["steps"]
    assert len(t["img_s"]["disent"]["rounds"]) == len(t["img_s"]["bcvae_fast"]["rounds"]) == t["rounds"]
    saved = json.loads((tmp_path / "peers.json").read_text())
    known = saved["metrics"]["codes"]["known answer"]["values"]
    assert known["factor_vae"]["own_sampling"]["disent"]["median"] == 1.0
    assert known["mig"]["same_points"]["disent"] == pytest.approx(known["mig"]["same_points"]["bcvae"], abs=1e-12)
