"""bcvae adam-steps: each loss term's share of an Adam step, against known answers (a second
moment made by hand; one step of torch's own Adam) and the structure of the capacity loss
(its regulariser never reaches the decoder; the two terms add up to the loss's gradient)."""

from __future__ import annotations

import pytest
import torch

from bcvae import adam_steps, config
from bcvae.losses import vae_loss
from bcvae.model import VAE
from conftest import ROOT, smoke_overrides

PAPER = ROOT / "experiments" / "capacity25_paper.yaml"


def _batch(n: int = 8, z_dim: int = 4, dtype=torch.float32):
    torch.manual_seed(0)
    x = (torch.rand(n, 1, 64, 64) < 0.2).to(dtype)
    return x, torch.randn(n, z_dim, dtype=dtype)


def _hand_made_state(v: list[torch.Tensor], steps: int = 7, beta2: float = 0.999, eps: float = 1e-12) -> dict:
    """An Adam state_dict whose bias-corrected second moment is exactly ``v``."""
    return {"param_groups": [{"betas": (0.9, beta2), "eps": eps, "params": list(range(len(v)))}],
            "state": {i: {"step": torch.tensor(float(steps)), "exp_avg_sq": t * (1 - beta2 ** steps)}
                      for i, t in enumerate(v)}}


def test_a_term_c_times_smaller_than_the_second_moment_gets_a_c_th_of_a_step():
    torch.manual_seed(1)
    model = VAE(4)
    g = [torch.randn_like(p) for p in model.parameters()]
    c, k = 40.0, 0.5
    v = [(c * t) ** 2 for t in g]
    # The encoder's largest tensor has never had a gradient (v̂ = 0): its elements, more than
    # half of the encoder's, must not count, whatever the gradient there.
    names = [n for n, _ in model.named_parameters()]
    enc = [i for i, n in enumerate(names) if n.startswith("encoder.")]
    biggest = max(enc, key=lambda i: g[i].numel())
    assert 2 * g[biggest].numel() > sum(g[i].numel() for i in enc)
    v[biggest] = torch.zeros_like(v[biggest])
    g[biggest] = torch.full_like(g[biggest], 1e3)
    out = adam_steps.step_shares(model, _hand_made_state(v), {"rec": g, "reg": [k * t for t in g]})
    for part in adam_steps.PARTS:
        assert out[part]["rec_share"] == pytest.approx(1 / c, rel=1e-6)
        assert out[part]["reg_share"] == pytest.approx(k / c, rel=1e-6)
    idx = [i for i, n in enumerate(names) if n.startswith("decoder.")]
    norm = torch.sqrt(sum((g[i].double() ** 2).sum() for i in idx))
    assert out["decoder"]["rec_norm"] == pytest.approx(float(norm)) and out["decoder"]["reg_norm"] == pytest.approx(
        k * float(norm))


def test_after_one_step_of_torch_adam_the_gradient_it_took_has_a_full_share():
    # After one step v̂ = g² exactly, so the gradient of that step gets |g| / (|g| + ε) ≈ 1.
    model = VAE(4)
    x, eps = _batch()
    cfg = config.load(PAPER, ["loss.c_steps=10"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = adam_steps.term_gradients(model, cfg.loss, x, eps, step=5)
    total = [a + b for a, b in zip(g["rec"], g["reg"])]
    for p, t in zip(model.parameters(), total):
        p.grad = t.clone()
    opt.step()
    zeros = [torch.zeros_like(t) for t in total]
    out = adam_steps.step_shares(model, opt.state_dict(), {"rec": total, "reg": zeros})
    for part in adam_steps.PARTS:
        assert out[part]["rec_share"] == pytest.approx(1.0, abs=1e-3)
        assert out[part]["reg_share"] == 0.0


def test_the_capacity_regulariser_does_not_reach_the_decoder_and_the_terms_add_up():
    model = VAE(4).double()
    x, eps = _batch(dtype=torch.float64)
    cfg = config.load(PAPER, ["loss.c_steps=10"])   # C = 2.5 at step 1: KL − C ≠ 0
    g = adam_steps.term_gradients(model, cfg.loss, x, eps, step=1)
    names = [n for n, _ in model.named_parameters()]
    dec = [t for n, t in zip(names, g["reg"]) if n.startswith("decoder.")]
    enc = [t for n, t in zip(names, g["reg"]) if n.startswith("encoder.")]
    assert all(torch.count_nonzero(t) == 0 for t in dec)
    assert any(torch.count_nonzero(t) > 0 for t in enc)
    model.zero_grad()
    loss, _ = vae_loss(cfg.loss, x, *model(x, eps), 1)
    loss.backward()
    for p, a, b in zip(model.parameters(), g["rec"], g["reg"]):
        torch.testing.assert_close(a + b, p.grad)


def test_clipping_scales_both_terms_by_the_factor_their_sum_is_clipped_by():
    g = {"rec": [torch.tensor([3.0, 0.0])], "reg": [torch.tensor([0.0, 4.0])]}   # ‖rec + reg‖ = 5
    scaled, factor = adam_steps.clip(g, 2.0)
    assert factor == pytest.approx(0.4)
    torch.testing.assert_close(scaled["rec"][0], torch.tensor([1.2, 0.0]))
    torch.testing.assert_close(scaled["reg"][0], torch.tensor([0.0, 1.6]))
    assert adam_steps.clip(g, 10.0)[1] == 1.0 and adam_steps.clip(g, 0.0) == (g, 1.0)


def sgd_run(tmp_path):
    """Two steps of the smoke model trained with SGD: a checkpoint without Adam's second moment."""
    from bcvae import train

    cfg = config.load(ROOT / "experiments" / "smoke.yaml", smoke_overrides(tmp_path / "sgd") + [
        "train.optimizer=sgd", "train.max_steps=2", "eval.at_end=false", "log.wandb_mode=disabled"])
    train.train(cfg)
    return train.run_dir_for(cfg)


def test_cli_on_a_run_and_its_one_line_refusals(smoke_run, tmp_path, capsys):
    from bcvae import cli

    out = tmp_path / "steps.json"
    assert cli.main(["adam-steps", str(smoke_run), "--images", "8", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| encoder |" in table and "| decoder |" in table
    rows = __import__("json").loads(out.read_text())
    assert rows[0]["step"] == 40 and rows[0]["decoder"]["reg_norm"] == 0.0 and rows[0]["clip_factor"] == 1.0
    assert 0 < rows[0]["encoder"]["rec_share"] < 10
    for run, message in [("capacity25", "holds no optimiser state"),      # pretrained/ keeps the VAE only
                         ("factorvae", "trains objective 'factor'; adam-steps reads capacity and beta")]:
        assert cli.main(["adam-steps", str(ROOT / "pretrained" / run), "--images", "8"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # An SGD run has no second moment: the terms' norms, and no shares.
    assert cli.main(["adam-steps", str(sgd_run(tmp_path)), "--images", "8", "--out", str(out)]) == 0
    assert "| – | – |" in capsys.readouterr().out
    (sgd,) = __import__("json").loads(out.read_text())
    assert sgd["optimizer"] == "sgd" and sgd["decoder"]["reg_norm"] == 0.0 and sgd["encoder"]["rec_norm"] > 0
    assert all(sgd[part][f"{term}_share"] is None for part in adam_steps.PARTS for term in adam_steps.TERMS)
    assert cli.main(["adam-steps", str(smoke_run), "--images", "1"]) == 2
    assert "--images must be >= 2" in capsys.readouterr().err
