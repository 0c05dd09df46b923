"""Objectives of bcvae.losses checked against torch.distributions, hand-written formulas
and analytically known answers (β-TCVAE on Gaussian codes)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from bcvae.losses import (capacity, capacity_gamma, discriminator_loss, kl_per_dim, kl_split, permute_dims,
                          recon_nll, tc_decomposition, vae_loss, warm_end_for, warm_start_over)
from bcvae.model import VAE, Discriminator


def _cfg(**overrides) -> SimpleNamespace:
    """The LossConfig fields vae_loss reads."""
    fields = dict(objective="beta", likelihood="bernoulli", beta=4.0, gamma=1000.0, c_max=25.0,
                  c_steps=100_000, gamma_warmup_steps=0, warm_start_steps=0, warm_start_until_mi=0.0, kl_scale="none",
                  latent_kl_max=0.0,
                  factor_gamma=35.0, tc_alpha=1.0, tc_beta=6.0, tc_gamma=1.0,
                  tc_estimator="mss", disc_lr=1e-4, disc_beta1=0.5, disc_beta2=0.9, disc_centre=False)
    return SimpleNamespace(**{**fields, **overrides})


def _posterior(batch: int = 6, dim: int = 4, seed: int = 0):
    """A fixed (x, logits, mu, logvar, z) tuple: x (B,1,64,64) binary, the rest random."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 1, 64, 64, generator=g) > 0.7).float()
    logits = torch.randn(batch, 1, 64, 64, generator=g)
    mu = torch.randn(batch, dim, generator=g)
    logvar = torch.randn(batch, dim, generator=g) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, dim, generator=g)
    return x, logits, mu, logvar, z


def _images(batch: int = 16, seed: int = 0) -> torch.Tensor:
    """dSprites-like binary squares at random positions and sizes, (B, 1, 64, 64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, 64, 64)
    for i in range(batch):
        size = int(torch.randint(6, 20, (1,), generator=g))
        r, c = torch.randint(0, 64 - size, (2,), generator=g).tolist()
        x[i, 0, r:r + size, c:c + size] = 1.0
    return x


# ---------------------------------------------------------------- reconstruction and KL

def test_kl_per_dim_equals_torch_distributions():
    _, _, mu, logvar, _ = _posterior()
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(dim=0)
    result = kl_per_dim(mu, logvar)
    assert result.shape == (4,)
    torch.testing.assert_close(result, expected)


def test_bernoulli_nll_is_summed_bce_over_batch():
    x, logits, *_ = _posterior()
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    torch.testing.assert_close(recon_nll(logits, x, "bernoulli"), expected)
    # and equals the Bernoulli log-likelihood from torch.distributions
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum() / x.shape[0]
    torch.testing.assert_close(recon_nll(logits, x), -log_lik)


def test_gaussian_nll_is_summed_squared_error_of_probabilities():
    x, logits, *_ = _posterior()
    p = 1.0 / (1.0 + torch.exp(-logits))
    expected = ((p - x) ** 2).sum() / x.shape[0]
    torch.testing.assert_close(recon_nll(logits, x, "gaussian"), expected)


def test_unknown_names_raise_naming_the_config_key():
    x, logits, mu, logvar, z = _posterior()
    with pytest.raises(ValueError, match="loss.likelihood.*'poisson'"):
        recon_nll(logits, x, "poisson")
    with pytest.raises(ValueError, match="loss.objective.*'vq'"):
        vae_loss(_cfg(objective="vq"), x, logits, mu, logvar, z, step=0)
    with pytest.raises(ValueError, match="loss.tc_estimator.*'iw'"):
        vae_loss(_cfg(objective="btcvae", tc_estimator="iw"), x, logits, mu, logvar, z, 0, dataset_size=100)
    with pytest.raises(ValueError, match="dataset_size"):
        vae_loss(_cfg(objective="btcvae"), x, logits, mu, logvar, z, step=0)
    with pytest.raises(ValueError, match="discriminator"):
        vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, step=0)
    with pytest.raises(ValueError, match="dataset_size"):
        tc_decomposition(z, mu, logvar, dataset_size=3)   # fewer data than the batch holds


# ---------------------------------------------------------------- β-VAE and capacity

def test_capacity_schedule_endpoints_and_linearity():
    assert capacity(0, 25.0, 1000) == 0.0
    assert capacity(500, 25.0, 1000) == pytest.approx(12.5)
    assert capacity(250, 25.0, 1000) == pytest.approx(6.25)
    assert capacity(1000, 25.0, 1000) == 25.0
    assert capacity(10_000, 25.0, 1000) == 25.0     # capped at C_max
    assert capacity(7, 25.0, 0) == 25.0             # no annealing
    assert capacity(123, 25.0, 1000) == capacity(123, 25.0, 1000)  # a pure function of the step


def _hand_terms(x, logits, mu, logvar):
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum() / x.shape[0]
    return rec, kl


def test_beta_loss_is_rec_plus_beta_kl():
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    loss, terms = vae_loss(_cfg(objective="beta", beta=4.0), x, logits, mu, logvar, z, step=0)
    torch.testing.assert_close(loss, rec + 4.0 * kl)
    torch.testing.assert_close(terms["rec"], rec)
    torch.testing.assert_close(terms["kl"], kl)
    assert terms["kl_per_dim"].shape == (4,)
    assert all(not t.requires_grad for t in terms.values() if isinstance(t, torch.Tensor))


def test_capacity_loss_is_rec_plus_gamma_abs_gap():
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    cfg = _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000)
    for step in (0, 40, 5000):
        c = min(25.0, 25.0 * step / 1000)
        loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=step)
        torch.testing.assert_close(loss, rec + 1000.0 * (kl - c).abs())
        assert terms["C"] == pytest.approx(c)
        torch.testing.assert_close(terms["kl_gap"], (kl - c).abs())


def test_a_per_latent_cap_adds_gamma_times_each_latents_excess():
    from torch.distributions import Normal, kl_divergence

    x, logits, mu, logvar, z = _posterior(dim=4)
    mu = mu * torch.tensor([4.0, 1.0, 0.1, 0.0])              # latents far above, near and below the cap
    rec, kl = _hand_terms(x, logits, mu, logvar)
    kl_j = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(0)
    cap = float(kl_j.sort().values[2])                         # two latents below or at it, two above
    excess = sum(max(0.0, float(k) - cap) for k in kl_j)
    assert excess > 0
    cfg = _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000, latent_kl_max=cap)
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=400)
    torch.testing.assert_close(loss, rec + 1000.0 * ((kl - 10.0).abs() + excess))
    assert float(terms["kl_excess"]) == pytest.approx(excess, rel=1e-5)
    # off (the paper): no cap term, no kl_excess logged
    loss, terms = vae_loss(_cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000), x, logits, mu,
                           logvar, z, step=400)
    torch.testing.assert_close(loss, rec + 1000.0 * (kl - 10.0).abs())
    assert "kl_excess" not in terms


def test_gamma_warmup_is_linear_from_zero_then_constant():
    assert capacity_gamma(500, 1000.0, 0) == 1000.0
    assert [capacity_gamma(s, 1000.0, 2000) for s in (0, 500, 2000, 9000)] == [0.0, 250.0, 1000.0, 1000.0]
    # after a warm start of 1,000 steps the warm-up begins there
    assert [capacity_gamma(s, 1000.0, 2000, 1000) for s in (0, 1000, 1500, 3000)] == [0.0, 0.0, 250.0, 1000.0]
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    cfg = _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000, gamma_warmup_steps=2000)
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=500)
    torch.testing.assert_close(loss, rec + 250.0 * (kl - 12.5).abs())
    assert terms["gamma"] == 250.0


def test_warm_start_is_the_plain_elbo_then_the_capacity_objective():
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    cfg = _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000, warm_start_steps=100)
    before, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=99)
    torch.testing.assert_close(before, rec + kl)            # β = 1
    assert terms["C"] == pytest.approx(2.475) and terms["gamma"] == 0.0
    after, _ = vae_loss(cfg, x, logits, mu, logvar, z, step=100)
    torch.testing.assert_close(after, rec + 1000.0 * (kl - 2.5).abs())
    ramped = _cfg(**{**vars(cfg), "gamma_warmup_steps": 400})     # then γ grows over 400 steps
    loss, terms = vae_loss(ramped, x, logits, mu, logvar, z, step=200)
    torch.testing.assert_close(loss, rec + 250.0 * (kl - 5.0).abs())
    assert terms["gamma"] == 250.0


def test_a_conditional_warm_start_lasts_until_the_decoder_reads_z():
    # Ends after at least warm_start_steps updates AND once a batch's I(x; z) reaches the threshold.
    cfg = _cfg(objective="capacity", warm_start_steps=100, warm_start_until_mi=3.0)
    assert not warm_start_over(cfg, 99, mi=12.0)     # too early, however informative
    assert not warm_start_over(cfg, 100, mi=2.99)    # long enough, but the decoder ignores z
    assert not warm_start_over(cfg, 5000, mi=0.0)    # the plateau: never
    assert warm_start_over(cfg, 100, mi=3.0) and warm_start_over(cfg, 4321, mi=5.0)
    fixed = _cfg(objective="capacity", warm_start_steps=100)
    assert [warm_start_over(fixed, s, mi=0.0) for s in (99, 100)] == [False, True]
    # vae_loss's warm_end: None (fixed length: loss.warm_start_steps), inf while it lasts, else the step.
    assert warm_end_for(fixed, None) is None and warm_end_for(fixed, 700) is None
    assert warm_end_for(cfg, None) == math.inf and warm_end_for(cfg, 700) == 700


def test_the_warm_start_ends_where_warm_end_says_and_gamma_warms_up_from_there():
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    cfg = _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=1000, warm_start_steps=100,
               warm_start_until_mi=3.0, gamma_warmup_steps=400)
    # Still warming at step 700, far past warm_start_steps: β = 1, C counting.
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=700, warm_end=math.inf)
    torch.testing.assert_close(loss, rec + kl)
    assert terms["gamma"] == 0.0 and terms["C"] == pytest.approx(17.5)
    # Ended at step 600: at 700 γ is a quarter into its 400-step warm-up: 250·|KL − 17.5|.
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step=700, warm_end=600)
    torch.testing.assert_close(loss, rec + 250.0 * (kl - 17.5).abs())
    assert terms["gamma"] == 250.0
    loss, _ = vae_loss(cfg, x, logits, mu, logvar, z, step=599, warm_end=600)
    torch.testing.assert_close(loss, rec + kl)


def test_batch_over_n_scaling_is_the_original_implementations_loss():
    # The original's run.py, written out by hand: MSE summed over pixels / batch on the
    # sigmoid output, KL averaged over the batch, loss = rec + γ·(batch/N)·|KL − C| with
    # C = clamp(C_max/C_stop · num_iter, 0, C_max). (Its num_iter counts the update being
    # made, one more than our step: C differs by C_max/C_stop = 0.00025 nats.)
    x, logits, mu, logvar, z = _posterior(batch=12, dim=6)
    n_train, gamma, c_max, c_stop, step = 663_552, 10.0, 25.0, 1e5, 4000
    rec = ((torch.sigmoid(logits) - x) ** 2).sum() / 12
    kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1), dim=0)
    c = torch.clamp(torch.tensor(c_max / c_stop * step), 0, c_max)
    original = rec + gamma * (12 / n_train) * (kld - c).abs()
    cfg = _cfg(objective="capacity", likelihood="gaussian", gamma=gamma, c_max=c_max, c_steps=int(c_stop),
               kl_scale="batch_over_n")
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, step, dataset_size=n_train)
    torch.testing.assert_close(loss, original)
    assert terms["gamma"] == pytest.approx(gamma * 12 / n_train)
    unscaled, _ = vae_loss(_cfg(**{**vars(cfg), "kl_scale": "none"}), x, logits, mu, logvar, z, step,
                           dataset_size=n_train)
    torch.testing.assert_close(unscaled, rec + gamma * (kld - c).abs())


# ---------------------------------------------------------------- KL = MI + marginal KL

def test_a_code_that_ignores_x_has_zero_mi_and_all_its_kl_is_marginal():
    # Every image gets the same posterior N(μ, σ²): q(z) = q(z|x), so I(x; z) = 0 exactly and
    # the whole KL is KL(q(z) ‖ p(z)), here a common shift of μ — what the plateau looks like.
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[1.5, -0.5, 0.0]]).repeat(64, 1).double()
    logvar = torch.tensor([[-1.0, 0.2, 0.0]]).repeat(64, 1).double()
    z = mu + torch.exp(0.5 * logvar) * torch.randn(64, 3, generator=g, dtype=torch.float64)
    split = kl_split(z, mu, logvar, 10_000, {})
    assert abs(split["mi"].item()) < 1e-12
    q = Normal(mu, torch.exp(0.5 * logvar))
    mc_kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    torch.testing.assert_close(split["marginal_kl"], mc_kl)


@pytest.mark.parametrize("log_var", [-120.0, -3000.0])
def test_a_posterior_variance_below_float32s_range_reads_a_number_not_nan(log_var):
    # An unstable run (SGD at lr 1e-3 on the plateau) drove latents' log σ² to −120 and, at KL
    # ≈ 2,000 nats, beyond float64's −1,418: exp(−log σ²) = inf while z − μ = 0, and the density
    # term was 0·inf = NaN. Identical posteriors again, so the truth is MI = 0 and marginal KL =
    # that posterior's KL: ½(−1 − log σ²) in the narrow latent, 0 in the others (up to sampling).
    g = torch.Generator().manual_seed(3)
    mu = torch.zeros(64, 3)
    logvar = torch.tensor([[log_var, 0.0, 0.0]]).repeat(64, 1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(64, 3, generator=g)
    split = kl_split(z, mu, logvar, 10_000, {})
    assert split["mi"].dtype == torch.float32 and abs(split["mi"].item()) < 1e-5
    if log_var > -1000:  # σ is a float64 number: torch.distributions gives the Monte-Carlo KL
        q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
        mc_kl = (q.log_prob(z.double()) - Normal(0.0, 1.0).log_prob(z.double())).sum(1).mean().item()
        assert split["marginal_kl"].item() == pytest.approx(mc_kl, rel=1e-5)
    assert split["marginal_kl"].item() == pytest.approx(0.5 * (-1 - log_var), abs=1.0)


def test_mi_of_two_separated_clusters_is_log_two():
    # x picks one of two far-apart posteriors with probability ½ each: I(x; z) = log 2 nats.
    # MSS weighs the 31 other same-cluster codes by 1/63 each (B = 64, N ≫ B): log(63/31).
    g = torch.Generator().manual_seed(1)
    mu = torch.cat([torch.full((32, 2), -20.0), torch.full((32, 2), 20.0)]).double()
    logvar = torch.zeros_like(mu)
    z = mu + torch.randn(64, 2, generator=g, dtype=torch.float64)
    mi = kl_split(z, mu, logvar, 10**9, {})["mi"].item()
    assert mi == pytest.approx(math.log(63 / 31), abs=1e-6)
    assert mi == pytest.approx(math.log(2.0), abs=0.02)


def test_the_batch_mi_estimate_reads_log_n_once_a_batch_posteriors_stop_overlapping():
    # The code takes one of K = 100,000 values (I(x; z) = log K = 11.5 nats for N = 10⁶ images),
    # but the 64 codes of a batch are distinct and narrow: no z_i has density under another x_j,
    # so the estimate is log N = 13.8 nats whatever K is. Near log N it is a ceiling, not a reading.
    g = torch.Generator().manual_seed(2)
    n, k = 10**6, 100_000
    values = torch.randperm(k, generator=g)[:64].double()        # 64 distinct code values
    mu = torch.stack([values / k * 8 - 4, torch.zeros(64, dtype=torch.float64)], dim=1)
    logvar = torch.full_like(mu, math.log(1e-7 ** 2))
    z = mu + torch.exp(0.5 * logvar) * torch.randn(64, 2, generator=g, dtype=torch.float64)
    mi = kl_split(z, mu, logvar, n, {})["mi"].item()
    assert mi == pytest.approx(math.log(n), abs=1e-3)
    assert mi > math.log(k) + 2


def test_the_batch_tc_estimate_of_a_factorial_code_is_biased_at_small_batches():
    # Codes on a Cartesian 32 × 32 grid with unit-variance posteriors overlapping their grid
    # neighbours: q(z) = q(z_1)·q(z_2) exactly, so TC = 0 at every z. With the whole dataset in one
    # batch (B = N) the stratified estimate reads ≈ 0; batches of 64 miss the neighbours whose
    # posteriors overlap each z_i, underestimate log q(z) more than the per-dimension marginals,
    # and read TC ≈ −0.56 nats: a bias larger than the quantity. Bigger batches shrink it.
    from bcvae.tc_bias import estimates_by_batch_size

    grid = torch.arange(32, dtype=torch.float64)
    mu = torch.cartesian_prod(grid, grid)                         # (1024, 2)
    logvar = torch.zeros_like(mu)
    b64, b256, whole = estimates_by_batch_size(mu, logvar, len(mu), [64, 256, len(mu)])
    assert (b64["batches"], b256["batches"], whole["batches"]) == (16, 4, 1)
    assert abs(whole["tc"]) < 0.1
    assert b64["tc"] < -0.4 and b64["tc"] < b256["tc"] < whole["tc"]
    # MI + TC + dim-wise KL is the Monte-Carlo KL of the same sample, whatever the batch
    assert b64["kl"] == pytest.approx(whole["kl"]) == pytest.approx(b256["kl"])
    with pytest.raises(ValueError, match="batch size 2048"):
        estimates_by_batch_size(mu, logvar, len(mu), [2048])


def test_tc_bias_reports_a_trained_run(smoke_run, capsys):
    from bcvae import cli

    assert cli.main(["tc-bias", str(smoke_run), "--images", "256", "--batch-sizes", "64,128"]) == 0
    table = capsys.readouterr().out.splitlines()
    # smoke.yaml: 2,000 images in 10 folds, one held out -> the objective's N is 1,800
    assert "N = 1,800" in table[0] and [line.split("|")[1].strip() for line in table[3:]] == ["64", "128"]


@pytest.mark.parametrize("sizes, message", [("64,x", "not a comma-separated list"), ("64,512", "[2, --images = 256]"),
                                            ("1", "[2, --images = 256]")])
def test_tc_bias_refuses_bad_batch_sizes_in_one_line(smoke_run, capsys, sizes, message):
    from bcvae import cli

    assert cli.main(["tc-bias", str(smoke_run), "--images", "256", "--batch-sizes", sizes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "--batch-sizes" in err[0], err


def test_every_objective_logs_mi_and_marginal_kl_that_sum_to_the_monte_carlo_kl():
    x, logits, mu, logvar, z = _posterior(batch=32, dim=4)
    q = Normal(mu, torch.exp(0.5 * logvar))
    mc_kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    disc = Discriminator(z_dim=4)
    for objective in ("beta", "capacity", "factor", "btcvae"):
        _, terms = vae_loss(_cfg(objective=objective), x, logits, mu, logvar, z, 10, discriminator=disc,
                            dataset_size=5000)
        torch.testing.assert_close(terms["mi"] + terms["marginal_kl"], mc_kl, rtol=1e-4, atol=1e-4)
        assert 0 < terms["mi"] <= math.log(5000) + 1e-6
    _, terms = vae_loss(_cfg(objective="beta"), x, logits, mu, logvar, z, 10)
    assert "mi" not in terms  # no dataset size, no estimate


# ---------------------------------------------------------------- FactorVAE

def test_permute_dims_keeps_marginals_and_breaks_pairs():
    torch.manual_seed(0)
    z = torch.randn(256, 5)
    perm = permute_dims(z)
    torch.testing.assert_close(perm.sort(dim=0).values, z.sort(dim=0).values)  # same marginal per column
    assert (perm != z).any(dim=1).float().mean() > 0.9   # rows are no longer the original tuples
    pair = torch.stack([z[:, 0], z[:, 0] + 0.01 * z[:, 1]], dim=1)   # correlation ≈ 1
    assert torch.corrcoef(pair.T)[0, 1] > 0.99
    assert abs(torch.corrcoef(permute_dims(pair).T)[0, 1]) < 0.2  # each column shuffled on its own


def test_discriminator_loss_matches_cross_entropy_and_reports_accuracy():
    torch.manual_seed(1)
    disc = Discriminator(z_dim=4, width=32)
    z, z_other = torch.randn(8, 4), torch.randn(8, 4)
    torch.manual_seed(5)
    loss, terms = discriminator_loss(disc, z, z_other)
    torch.manual_seed(5)
    z_perm = permute_dims(z_other)
    expected = 0.5 * (F.cross_entropy(disc(z), torch.zeros(8, dtype=torch.long))
                      + F.cross_entropy(disc(z_perm), torch.ones(8, dtype=torch.long)))
    torch.testing.assert_close(loss, expected)
    acc = 0.5 * ((disc(z).argmax(1) == 0).float().mean() + (disc(z_perm).argmax(1) == 1).float().mean())
    torch.testing.assert_close(terms["disc_acc"], acc)


def test_factor_tc_is_mean_logit_difference():
    torch.manual_seed(2)
    disc = Discriminator(z_dim=4, width=16)
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    loss, terms = vae_loss(_cfg(objective="factor", factor_gamma=35.0), x, logits, mu, logvar, z, 0,
                           discriminator=disc)
    d = disc(z)
    tc = (d[:, 0] - d[:, 1]).mean()      # log D/(1-D) with D = softmax(d)[:, 0] = P("from q(z)")
    torch.testing.assert_close(tc, torch.log(d.softmax(1)[:, 0] / d.softmax(1)[:, 1]).mean())
    torch.testing.assert_close(terms["tc"], tc.detach())
    torch.testing.assert_close(loss, rec + kl + 35.0 * tc)


def _factor_setup(seed: int = 3):
    torch.manual_seed(seed)
    vae, disc = VAE(z_dim=4), Discriminator(z_dim=4, width=64)
    return vae, disc, _images(8, seed), _images(8, seed + 100)


def test_discriminator_loss_gives_no_gradient_to_the_encoder():
    vae, disc, x, x_other = _factor_setup()
    _, _, _, z = vae(x)
    _, _, _, z_other = vae(x_other)              # deliberately NOT under no_grad
    d_loss, _ = discriminator_loss(disc, z, z_other)
    d_loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is None or not p.grad.any(), name
    assert all(p.grad is not None and p.grad.any() for p in disc.parameters())


def test_factor_vae_loss_gives_no_gradient_to_the_discriminator():
    vae, disc, x, _ = _factor_setup()
    logits, mu, logvar, z = vae(x)
    loss, _ = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, 0, discriminator=disc)
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    # while the TC term does reach the encoder: compare with the same loss without it
    with_tc = vae.encoder[-1].weight.grad.clone()
    vae.zero_grad()
    torch.manual_seed(0)
    logits, mu, logvar, z = vae(x)
    vae_loss(_cfg(objective="factor", factor_gamma=0.0), x, logits, mu, logvar, z, 0,
             discriminator=disc)[0].backward()
    assert not torch.equal(with_tc, vae.encoder[-1].weight.grad)


def test_factor_trainer_order_runs_and_the_wrong_order_fails_loudly():
    vae, disc, x, x_other = _factor_setup()
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    d_opt = torch.optim.Adam(disc.parameters(), 1e-4, betas=(0.5, 0.9))
    for step in range(2):                                    # the order in the losses docstring
        logits, mu, logvar, z = vae(x)
        loss, _ = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, step, discriminator=disc)
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            z_other = vae(x_other)[3]
        d_loss, _ = discriminator_loss(disc, z, z_other)
        d_opt.zero_grad(); d_loss.backward(); d_opt.step()
    # stepping D between the VAE forward and its backward is refused, not silently wrong
    logits, mu, logvar, z = vae(x)
    loss, _ = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, 2, discriminator=disc)
    d_loss, _ = discriminator_loss(disc, z, vae(x_other)[3])
    d_opt.zero_grad(); d_loss.backward(); d_opt.step()
    with pytest.raises(RuntimeError, match="FactorVAE update order|inplace"):
        loss.backward()


@pytest.mark.parametrize("make_opt", [
    lambda ps: __import__("bcvae.train", fromlist=["_adam"])._adam(ps, 1e-2, (0.5, 0.9)),   # the trainer's own
    lambda ps: torch.optim.Adam(ps, 1e-2, betas=(0.5, 0.9), foreach=True),
    lambda ps: torch.optim.SGD(ps, 1e-2),
], ids=["trainer-fused-adam", "foreach-adam", "sgd"])
def test_the_wrong_factor_order_raises_whatever_the_optimiser(make_opt):
    vae, disc, x, x_other = _factor_setup()
    d_opt = make_opt(list(disc.parameters()))
    logits, mu, logvar, z = vae(x)
    loss, _ = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, 0, discriminator=disc)
    with torch.no_grad():
        z_other = vae(x_other)[3]
    d_loss, _ = discriminator_loss(disc, z, z_other)
    d_opt.zero_grad(); d_loss.backward(); d_opt.step()      # D stepped too early
    with pytest.raises(RuntimeError, match="FactorVAE update order"):
        loss.backward()


def test_the_guard_leaves_the_right_order_and_no_grad_evaluation_alone():
    vae, disc, x, x_other = _factor_setup()
    d_opt = __import__("bcvae.train", fromlist=["_adam"])._adam(list(disc.parameters()), 1e-2, (0.5, 0.9))
    with torch.no_grad():                                     # validation: no graph, no hook
        vae_loss(_cfg(objective="factor"), x, *vae(x), 0, discriminator=disc)
    d_opt.zero_grad(); discriminator_loss(disc, torch.randn(8, 4), torch.randn(8, 4))[0].backward(); d_opt.step()
    logits, mu, logvar, z = vae(x)
    loss, _ = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, 0, discriminator=disc)
    loss.backward()                                           # D unchanged since the forward pass
    assert vae.encoder[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- β-TCVAE

N_DATA = 1_000_000   # the batch's μ are i.i.d. draws, as from a dataset this large


def _gaussian_codes(corr: torch.Tensor, var: float, noise: float, batch: int, seed: int):
    """Codes whose aggregate posterior is N(0, var·corr): μ ~ N(0, var·corr − noise·I),
    q(z|x) = N(μ, noise·I). Returns (z, mu, logvar), each (B, D), float64."""
    g = torch.Generator().manual_seed(seed)
    dim = corr.shape[0]
    chol = torch.linalg.cholesky(var * corr - noise * torch.eye(dim, dtype=torch.float64))
    mu = torch.randn(batch, dim, generator=g, dtype=torch.float64) @ chol.T
    z = mu + math.sqrt(noise) * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return z, mu, torch.full_like(mu, math.log(noise))


def _analytic(corr: torch.Tensor, var: float, noise: float) -> tuple[float, float, float]:
    """MI, TC and dimension-wise KL of the Gaussian codes above, in closed form."""
    dim = corr.shape[0]
    logdet_r = torch.logdet(corr).item()
    mi = 0.5 * (dim * math.log(var) + logdet_r - dim * math.log(noise))   # I(x; z) = ½ log |Σ| / |noise·I|
    tc = -0.5 * logdet_r
    dw_kl = dim * 0.5 * (var - 1.0 - math.log(var))                       # Σ_d KL(N(0, var) ‖ N(0, 1))
    return mi, tc, dw_kl


def _mean_estimate(corr, estimator, var=1.5, noise=0.4, batch=1024, seeds=4):
    runs = [torch.stack(tc_decomposition(*_gaussian_codes(corr, var, noise, batch, s), N_DATA, estimator))
            for s in range(seeds)]
    return torch.stack(runs).mean(dim=0).tolist()


def _equicorrelation(dim: int, rho: float) -> torch.Tensor:
    corr = torch.full((dim, dim), rho, dtype=torch.float64)
    return corr.fill_diagonal_(1.0)


def test_mss_recovers_analytic_tc_mi_and_dimensionwise_kl():
    corr = _equicorrelation(3, 0.6)
    mi, tc, dw_kl = _mean_estimate(corr, "mss")
    true_mi, true_tc, true_dw = _analytic(corr, 1.5, 0.4)
    assert true_tc == pytest.approx(0.522, abs=1e-3)
    assert tc > 0
    assert tc == pytest.approx(true_tc, abs=0.08)
    assert mi == pytest.approx(true_mi, abs=0.1)
    assert dw_kl == pytest.approx(true_dw, abs=0.03)


def test_tc_of_independent_codes_is_near_zero():
    mi, tc, _ = _mean_estimate(torch.eye(3, dtype=torch.float64), "mss")
    assert abs(tc) < 0.03
    assert mi == pytest.approx(_analytic(torch.eye(3, dtype=torch.float64), 1.5, 0.4)[0], abs=0.1)


def test_mws_equals_mss_up_to_its_documented_log_n_offsets():
    corr, dim = _equicorrelation(3, 0.6), 3
    mss = _mean_estimate(corr, "mss", seeds=2)
    mws = _mean_estimate(corr, "mws", seeds=2)
    log_n = math.log(N_DATA)
    assert mws[0] - log_n == pytest.approx(mss[0], abs=0.05)
    assert mws[1] - (dim - 1) * log_n == pytest.approx(mss[1], abs=0.05)
    assert mws[2] + dim * log_n == pytest.approx(mss[2], abs=0.05)


def test_estimator_constants_on_non_overlapping_posteriors():
    # Far-apart, sharp posteriors: each z_i has density only under its own x_i, in every
    # dimension, so log q(z_i) = log q(z_i|x_i) + log w_ii exactly. True MI of N such points is
    # log N; MSS's self-weight is 1/N and MWS's is 1/(N·M).
    batch, dim, n = 8, 3, 5000
    mu = torch.arange(batch, dtype=torch.float64).unsqueeze(1).repeat(1, dim) * 100.0
    logvar = torch.full_like(mu, math.log(1e-2))
    z = mu + 0.1 * torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mi, tc, _ = tc_decomposition(z, mu, logvar, n, "mss")
    assert mi.item() == pytest.approx(math.log(n), abs=1e-9)
    assert tc.item() == pytest.approx((dim - 1) * math.log(n), abs=1e-9)
    mi, tc, _ = tc_decomposition(z, mu, logvar, n, "mws")
    assert mi.item() == pytest.approx(math.log(n * batch), abs=1e-9)
    assert tc.item() == pytest.approx((dim - 1) * math.log(n * batch), abs=1e-9)


def test_mws_offset_depends_on_how_much_posteriors_overlap():
    # What the tc_decomposition docstring says: MWS − MSS on the MI is ≈ log N for overlapping
    # posteriors and log B for separated ones — not a constant.
    batch, n = 64, 10**6
    corr = _equicorrelation(3, 0.6)
    overlap = _mean_estimate(corr, "mws", seeds=2)[0] - _mean_estimate(corr, "mss", seeds=2)[0]
    mu = torch.arange(batch, dtype=torch.float64).unsqueeze(1).repeat(1, 3) * 100.0
    logvar = torch.full_like(mu, math.log(1e-2))
    z = mu + 0.1 * torch.randn(batch, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    apart = (tc_decomposition(z, mu, logvar, n, "mws")[0] - tc_decomposition(z, mu, logvar, n, "mss")[0]).item()
    assert overlap == pytest.approx(math.log(N_DATA), abs=0.05)
    assert apart == pytest.approx(math.log(batch), abs=1e-6)
    assert overlap - apart > 9.0


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_decomposition_sums_to_monte_carlo_kl(estimator):
    _, _, mu, logvar, z = _posterior(batch=32, dim=5)
    mi, tc, dw_kl = tc_decomposition(z.double(), mu.double(), logvar.double(), 10_000, estimator)
    q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    mc_kl = (q.log_prob(z.double()) - Normal(0.0, 1.0).log_prob(z.double())).sum(1).mean()
    torch.testing.assert_close(mi + tc + dw_kl, mc_kl)


def test_btcvae_loss_weights_the_three_terms():
    x, logits, mu, logvar, z = _posterior()
    rec, kl = _hand_terms(x, logits, mu, logvar)
    cfg = _cfg(objective="btcvae", tc_alpha=2.0, tc_beta=6.0, tc_gamma=0.5, tc_estimator="mss")
    loss, terms = vae_loss(cfg, x, logits, mu, logvar, z, 0, dataset_size=500)
    mi, tc, dw_kl = tc_decomposition(z, mu, logvar, 500, "mss")
    torch.testing.assert_close(loss, rec + 2.0 * mi + 6.0 * tc + 0.5 * dw_kl)
    torch.testing.assert_close(terms["kl"], kl)
    assert {"mi", "tc", "dw_kl"} <= terms.keys()


# ---------------------------------------------------------------- optimisation

@pytest.mark.parametrize("cfg", [
    _cfg(objective="beta", beta=4.0),
    _cfg(objective="capacity", gamma=1000.0, c_max=25.0, c_steps=100),
    _cfg(objective="factor", factor_gamma=35.0),
    _cfg(objective="btcvae", tc_estimator="mss"),
    _cfg(objective="btcvae", tc_estimator="mws", likelihood="gaussian"),
], ids=["beta", "capacity", "factor", "btcvae-mss", "btcvae-mws-gaussian"])
def test_a_few_adam_steps_reduce_the_objective(cfg):
    torch.manual_seed(0)
    vae, disc = VAE(z_dim=6), Discriminator(z_dim=6, width=64)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    x = _images(16)

    def objective(step: int) -> torch.Tensor:
        torch.manual_seed(1234)               # the same ε for every evaluation
        logits, mu, logvar, z = vae(x)
        return vae_loss(cfg, x, logits, mu, logvar, z, step, discriminator=disc, dataset_size=1000)[0]

    before = objective(50).item()
    for _ in range(8):
        loss = objective(50)
        opt.zero_grad(); loss.backward(); opt.step()
    assert objective(50).item() < before


def test_discriminator_learns_to_spot_correlated_codes():
    torch.manual_seed(0)
    disc = Discriminator(z_dim=2, width=64)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    base = torch.randn(512, 1)
    z = torch.cat([base, base + 0.1 * torch.randn(512, 1)], dim=1)   # strongly dependent pair
    first = discriminator_loss(disc, z, z)[0].item()
    for _ in range(150):
        loss, terms = discriminator_loss(disc, z, z)
        opt.zero_grad(); loss.backward(); opt.step()
    assert first == pytest.approx(math.log(2), abs=0.1)
    assert loss.item() < 0.3 and terms["disc_acc"] > 0.85
    x, logits, mu, logvar, _ = _posterior(batch=512, dim=2)
    _, vterms = vae_loss(_cfg(objective="factor"), x, logits, mu, logvar, z, 0, discriminator=disc)
    assert vterms["tc"] > 0.5      # the density-ratio estimate sees the dependence
