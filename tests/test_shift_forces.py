"""bcvae shift-forces: each loss term's gradient with respect to a shift common to every code,
against known answers (the KL's is the mean μ; a discriminator with a constant output exerts
none) and against central finite differences of the terms themselves."""

from __future__ import annotations

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
