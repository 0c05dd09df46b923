"""bcvae shift-forces: each loss term's gradient with respect to a shift common to every code,
against known answers (the KL's is the mean μ; a discriminator with a constant output exerts
none) and against central finite differences of the terms themselves."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from bcvae.losses import kl_per_dim, recon_nll
from bcvae.model import VAE, Discriminator
from bcvae.shift_forces import shift_forces
from conftest import ROOT


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = VAE(4).double().eval()
    disc = Discriminator(4, width=32, depth=3).double().eval()
    x = (torch.rand(16, 1, 64, 64, dtype=torch.float64) < 0.2).double()
    eps = torch.randn(16, 4, dtype=torch.float64)
    return model, disc, x, eps


def terms_at(model, disc, gamma, x, eps, delta):
    """The three loss terms with every μ shifted by ``delta``."""
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mu = mu + delta
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = disc(z)
        return {"rec": recon_nll(model.decode(z), x), "kl": kl_per_dim(mu, logvar).sum(),
                "tc": gamma * (logits[:, 0] - logits[:, 1]).mean()}


def test_the_kl_pulls_with_the_mean_of_mu(setup):
    model, disc, x, eps = setup
    forces = shift_forces(model, disc, 35.0, x, eps)
    with torch.no_grad():
        mean_mu = model.encode(x)[0].mean(0)
    torch.testing.assert_close(forces["kl"], mean_mu)


def test_a_discriminator_with_a_constant_output_exerts_no_force(setup):
    model, _, x, eps = setup
    disc = Discriminator(4, width=32, depth=3).double()
    with torch.no_grad():
        disc.net[-1].weight.zero_()
        disc.net[-1].bias.copy_(torch.tensor([2.0, -1.0]))
    assert torch.equal(shift_forces(model, disc, 35.0, x, eps)["tc"], torch.zeros(4, dtype=torch.float64))


def test_each_force_is_the_finite_difference_of_its_term(setup):
    model, disc, x, eps = setup
    forces = shift_forces(model, disc, 35.0, x, eps)
    h = 1e-5
    for j in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[j] = h
        up, down = terms_at(model, disc, 35.0, x, eps, step), terms_at(model, disc, 35.0, x, eps, -step)
        for term in ("rec", "kl", "tc"):
            numeric = (up[term] - down[term]) / (2 * h)
            assert forces[term][j].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-6), (term, j)


@pytest.mark.parametrize("run, message", [
    ("pretrained/beta4", "trains objective 'beta'; the forces need FactorVAE's discriminator"),
    ("pretrained/factorvae", "holds no discriminator"),
])
def test_a_run_without_a_discriminator_is_one_clear_line(run, message):
    r = subprocess.run([sys.executable, "-m", "bcvae", "shift-forces", run, "--images", "8"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_discriminator_shown_centred_codes_exerts_no_force_and_ignores_a_common_shift(setup):
    from types import SimpleNamespace

    from bcvae.losses import discriminator_loss, vae_loss

    model, disc, x, eps = setup
    assert shift_forces(model, disc, 35.0, x, eps, centre=False)["tc"].abs().max() > 1e-3
    torch.testing.assert_close(shift_forces(model, disc, 35.0, x, eps, centre=True)["tc"],
                               torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    # the training losses read the same: the VAE's TC term and the discriminator's loss
    z, z_other = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    shift = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    cfg = SimpleNamespace(objective="factor", factor_gamma=35.0, likelihood="bernoulli", disc_centre=True)
    mu, logvar, logits = torch.zeros(16, 4), torch.zeros(16, 4), torch.zeros(16, 1, 64, 64)
    disc32 = copy.deepcopy(disc).float()
    tc = [vae_loss(cfg, x.float(), logits, mu, logvar, zz.float(), 0, discriminator=disc32)[1]["tc"]
          for zz in (z, z + shift)]
    torch.testing.assert_close(tc[0], tc[1])

    def d_loss(a, b, **kw):
        torch.manual_seed(1)  # the same dimension-wise permutation of b each time
        return discriminator_loss(disc, a, b, **kw)[0]

    pairs = ((z, z_other), (z + shift, z_other - shift))
    torch.testing.assert_close(*[d_loss(a, b, centre=True) for a, b in pairs])
    assert not torch.allclose(*[d_loss(a, b) for a, b in pairs])


def test_the_command_prints_every_force_of_a_factor_run_and_none_from_a_centred_discriminator(tmp_path, capsys):
    from bcvae import cli, config, train
    from conftest import smoke_overrides

    runs = {}
    for centre in (False, True):
        overrides = [*smoke_overrides(tmp_path), "loss.objective=factor", "train.max_steps=10", "eval.at_end=false",
                     f"loss.disc_centre={str(centre).lower()}", f"name=factor-centre-{centre}"]
        cfg = config.load(ROOT / "experiments" / "smoke.yaml", overrides)
        train.train(cfg)
        runs[centre] = train.run_dir_for(cfg)
    capsys.readouterr()
    assert cli.main(["shift-forces", str(runs[False]), str(runs[True]), "--images", "32"]) == 0
    out = capsys.readouterr().out
    plain, centred = out.split(str(runs[True]))
    for part in (plain, centred):
        assert "(step 10)" in part and all(f"∂{t}" in part for t in ("rec", "kl ", "tc "))
    norm = lambda text: float(text.split("|tc| ")[1].split(",")[0])  # noqa: E731
    assert norm(plain) > 0 and norm(centred) == 0.0
