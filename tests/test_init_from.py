"""Starting a run from trained weights (``train.init_from``) and re-drawing chosen latents
(``train.redraw_below``, ``VAE.redraw_latents``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from bcvae import checkpoint, config, evaluate, train
from bcvae.config import ConfigError
from bcvae.errors import TrainingError
from bcvae.model import VAE
from conftest import ROOT, assert_same_params, params, smoke_overrides

SMOKE = ROOT / "experiments" / "smoke.yaml"


def load(tmp_path: Path, *extra: str) -> config.Config:
    return config.load(SMOKE, smoke_overrides(tmp_path) + ["eval.at_end=false", "train.threads=1", *extra])


def step0_params(cfg: config.Config) -> dict:
    """The weights a run starts from: building the trainer writes its step-0 checkpoint."""
    trainer = train.Trainer(cfg)
    trainer.release()
    return params(trainer.dir)


def entries(model: VAE, j: int) -> list[torch.Tensor]:
    p = dict(model.named_parameters())
    return [p[name][index].detach().clone() for name, index in model.latent_entries(j)]


# ------------------------------------------------------------------ the model's per-latent entries

@pytest.mark.parametrize("arch", ["burgess", "original"])
def test_latent_entries_are_all_that_latent_j_reaches(arch):
    """Scrambling latent j's entries moves μ_j and log σ²_j only, and afterwards the decoder
    still draws the same picture whatever z_j is."""
    torch.manual_seed(0)
    model = VAE(None, arch).eval()
    x = (torch.rand(4, 1, 64, 64) > 0.7).float()
    j, z_dim = 2, model.z_dim
    mu0, logvar0 = model.encode(x)
    decoder_column = dict(model.named_parameters())["decoder.0.weight"]
    with torch.no_grad():
        for name, index in model.latent_entries(j):
            dict(model.named_parameters())[name][index] = 0.0
    mu1, logvar1 = model.encode(x)
    others = [d for d in range(z_dim) if d != j]
    torch.testing.assert_close(mu1[:, others], mu0[:, others], rtol=0, atol=0)
    torch.testing.assert_close(logvar1[:, others], logvar0[:, others], rtol=0, atol=0)
    assert torch.all(mu1[:, j] == 0) and torch.all(logvar1[:, j] == 0)
    assert torch.all(decoder_column[:, j] == 0)
    z = torch.randn(4, z_dim)
    z_moved = z.clone()
    z_moved[:, j] += 3.0
    torch.testing.assert_close(model.decode(z_moved), model.decode(z), rtol=0, atol=0)


def test_latent_entries_refuse_a_latent_out_of_range():
    with pytest.raises(ValueError, match="latent 10 out of range 0..9"):
        VAE().latent_entries(10)


@pytest.mark.parametrize("arch", ["burgess", "original"])
def test_redraw_takes_a_fresh_models_entries_and_leaves_the_rest(arch):
    torch.manual_seed(1)
    model = VAE(None, arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    fresh = VAE(None, arch)
    rng_before = torch.random.get_rng_state()
    model.redraw_latents([0, 3], seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "re-drawing must not move the global RNG"
    for j in (0, 3):
        for got, want in zip(entries(model, j), entries(fresh, j)):
            assert torch.equal(got, want)
    # Everything else is bit-for-bit the trained model: zero the re-drawn entries in both and compare.
    after = model.state_dict()
    for j in (0, 3):
        for name, index in model.latent_entries(j):
            after[name][index] = 0.0
            before[name][index] = 0.0
    for key in before:
        assert torch.equal(after[key], before[key]), key


# ------------------------------------------------------------------ train.init_from

def test_init_from_a_run_or_its_export_starts_at_its_weights(smoke_run, tmp_path):
    start = step0_params(load(tmp_path / "run", f"train.init_from={smoke_run}"))
    assert_same_params(start, params(smoke_run))
    exported = tmp_path / "pretrained" / "smoke"
    evaluate.export(smoke_run, exported)
    start = step0_params(load(tmp_path / "pre", f"train.init_from={exported}"))
    assert_same_params(start, params(smoke_run))
    # A fresh optimiser: no moments carried over from the trained run.
    ckpt = checkpoint.load_checkpoint(train.run_dir_for(load(tmp_path / "pre")) / "checkpoint.pt")
    assert ckpt["step"] == 0 and not ckpt["opt"]["state"]


def training_kl(model: VAE, cfg: config.Config) -> np.ndarray:
    """KL per latent by torch.distributions, on the 4,096 training images (or all) drawn with ``seed``."""
    split = train.load_split(cfg.data)
    n = len(split.train)
    idx = np.sort(np.random.default_rng(cfg.seed).choice(n, min(4096, n), replace=False))
    with torch.no_grad():
        mu, logvar = model.eval().encode(split.train.batch(idx))
    q = Normal(mu.double(), (0.5 * logvar.double()).exp())
    return kl_divergence(q, Normal(0.0, 1.0)).mean(0).numpy()


def test_redraw_below_redraws_exactly_the_latents_under_the_threshold(smoke_run, tmp_path):
    trained, _, _ = checkpoint.load_model(smoke_run / "checkpoint.pt", torch.device("cpu"))
    cfg = load(tmp_path, f"train.init_from={smoke_run}")
    kl = training_kl(trained, cfg)
    order = np.sort(kl)
    gap = int(np.argmax(np.diff(order)))           # the widest gap: no latent sits near the threshold
    threshold = float(order[gap] + order[gap + 1]) / 2
    below = sorted(int(j) for j in np.flatnonzero(kl < threshold))
    assert 0 < len(below) < len(kl), "the check needs latents on both sides"
    start = step0_params(load(tmp_path, f"train.init_from={smoke_run}", f"train.redraw_below={threshold}",
                              "seed=0"))
    model = VAE(cfg.model.z_dim, cfg.model.arch)
    model.load_state_dict(start)
    torch.manual_seed(0)                           # the run's seed draws the new entries
    fresh = VAE(cfg.model.z_dim, cfg.model.arch)
    for j in range(cfg.model.z_dim):
        want = entries(fresh if j in below else trained, j)
        for got, expected in zip(entries(model, j), want):
            assert torch.equal(got, expected), f"latent {j}"


def test_a_run_started_from_weights_resumes_exactly(smoke_run, tmp_path):
    init = [f"train.init_from={smoke_run}", "train.redraw_below=1e9"]
    whole = train.Trainer(load(tmp_path / "a", *init, "train.max_steps=30"))
    whole.fit()
    train.train(load(tmp_path / "b", *init, "train.max_steps=13"))
    resumed = load(tmp_path / "b", *init, "train.max_steps=30")
    train.train(resumed)                           # must not start from the trained weights again
    assert_same_params(params(whole.dir), params(train.run_dir_for(resumed)))


def test_bad_init_from_says_which_key_and_why(smoke_run, tmp_path):
    with pytest.raises(TrainingError, match=r"train.init_from: .*nowhere does not exist"):
        step0_params(load(tmp_path / "a", f"train.init_from={tmp_path / 'nowhere'}"))
    with pytest.raises(TrainingError, match=r"train.init_from: .* burgess model with 10 latents; this run "
                                            r"builds burgess with 4"):
        step0_params(load(tmp_path / "b", f"train.init_from={smoke_run}", "model.z_dim=4"))
    with pytest.raises(ConfigError, match=r"train.redraw_below: re-draws latents of trained weights"):
        load(tmp_path / "c", "train.redraw_below=0.1")
    with pytest.raises(ConfigError, match=r"train.redraw_below: must be finite and >= 0"):
        load(tmp_path / "c", f"train.init_from={smoke_run}", "train.redraw_below=-1")
