"""Architectures of bcvae.model checked against their papers and against PyTorch itself."""
import pytest
import torch
from torch import nn

from bcvae.model import VAE, Discriminator


def _layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("arch, z_dim", [("burgess", 10), ("original", 6)])
def test_shapes_through_both_architectures(arch, z_dim):
    torch.manual_seed(0)
    model = VAE(arch=arch)
    logits, mu, logvar, z = model(torch.rand(5, 1, 64, 64))
    assert model.z_dim == z_dim                      # each architecture's published latent size
    assert logits.shape == (5, 1, 64, 64)
    assert mu.shape == logvar.shape == z.shape == (5, z_dim)
    assert VAE(z_dim=7, arch=arch).encode(torch.rand(2, 1, 64, 64))[0].shape == (2, 7)


def test_burgess_architecture_matches_paper_appendix():
    model = VAE(z_dim=10, arch="burgess")
    convs = _layers(model.encoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == \
        [(1, 32, (4, 4), (2, 2), (1, 1))] + [(32, 32, (4, 4), (2, 2), (1, 1))] * 3
    assert [(l.in_features, l.out_features) for l in _layers(model.encoder, nn.Linear)] == \
        [(512, 256), (256, 256), (256, 20)]
    assert [(l.in_features, l.out_features) for l in _layers(model.decoder, nn.Linear)] == \
        [(10, 256), (256, 256), (256, 512)]
    deconvs = _layers(model.decoder, nn.ConvTranspose2d)
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [(32, 32)] * 3 + [(32, 1)]
    assert not _layers(model, nn.BatchNorm2d)
    # logits, not probabilities: the last module is the transposed conv itself
    assert isinstance(model.decoder[-1], nn.ConvTranspose2d)


def test_original_architecture_channels_and_normalisation():
    model = VAE(arch="original")
    assert [c.out_channels for c in _layers(model.encoder, nn.Conv2d)] == [32, 64, 128, 256]
    assert [d.out_channels for d in _layers(model.decoder, nn.ConvTranspose2d)] == [128, 64, 32, 1]
    assert len(_layers(model, nn.BatchNorm2d)) == 7
    assert _layers(model, nn.LeakyReLU) and not _layers(model, nn.ReLU)
    assert isinstance(model.decoder[-1], nn.ConvTranspose2d)


def test_unknown_architecture_names_the_key():
    with pytest.raises(ValueError, match="model.arch.*'resnet'"):
        VAE(arch="resnet")


@pytest.mark.parametrize("arch", ["burgess", "original"])
def test_channels_last_input_gives_same_output(arch):
    torch.manual_seed(1)
    model = VAE(arch=arch).eval()  # eval: BatchNorm uses its running statistics, no update
    x = (torch.rand(4, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mu_cl, logvar_cl = model.encode(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(mu_cl, mu, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logvar_cl, logvar, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.decode(mu_cl), model.decode(mu), atol=1e-5, rtol=1e-5)


def test_reparameterised_sample_is_mu_plus_sigma_times_standard_normal():
    torch.manual_seed(2)
    model = VAE(arch="burgess")
    _, mu, logvar, z = model(torch.rand(512, 1, 64, 64))
    eps = (z - mu) / torch.exp(0.5 * logvar)
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1.0) < 0.05
    z.sum().backward()                                  # the sample is differentiable in μ, σ
    assert model.encoder[-1].weight.grad.abs().sum() > 0


def test_forward_traces_as_one_graph_under_torch_compile():
    torch.manual_seed(3)
    model = VAE(arch="burgess")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: no graph breaks
    x = torch.rand(3, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    logits, mu, _, _ = compiled(x)
    logits.sum().backward()
    torch.testing.assert_close(mu, model.encode(x)[0])


def test_discriminator_is_kim_mnih_mlp():
    disc = Discriminator(z_dim=10)
    linears = _layers(disc, nn.Linear)
    assert [(l.in_features, l.out_features) for l in linears] == \
        [(10, 1000)] + [(1000, 1000)] * 4 + [(1000, 2)]
    assert {a.negative_slope for a in _layers(disc, nn.LeakyReLU)} == {0.2}
    assert disc(torch.randn(7, 10)).shape == (7, 2)
    with pytest.raises(ValueError, match="depth"):
        Discriminator(depth=1)
