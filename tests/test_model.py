"""Architectures of bcvae.model checked against their papers and against PyTorch itself."""
import pytest
import torch
from torch import nn

from bcvae.model import VAE, Discriminator


def _layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("arch, z_dim", [("burgess", 10), ("burgess_leaky", 10), ("original", 6)])
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


def test_burgess_leaky_is_the_paper_network_with_leaky_encoder_units():
    """Same layers and, from the same seed, the same initial weights as ``burgess`` (a run of each
    starts from one point); only the encoder's activations differ."""
    torch.manual_seed(3)
    paper = VAE(arch="burgess")
    torch.manual_seed(3)
    leaky = VAE(arch="burgess_leaky")
    assert leaky.z_dim == 10
    a, b = paper.state_dict(), leaky.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [nn.LeakyReLU if type(m) is nn.ReLU else type(m) for m in paper.encoder] == \
        [type(m) for m in leaky.encoder]
    acts = [m for m in leaky.encoder if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert len(acts) == 6 and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01 for m in acts)
    assert [type(m) for m in leaky.decoder] == [type(m) for m in paper.decoder]
    x = torch.rand(3, 1, 64, 64)
    mu_paper, mu_leaky = paper.encode(x)[0], leaky.encode(x)[0]
    assert mu_paper.shape == mu_leaky.shape == (3, 10) and not torch.equal(mu_paper, mu_leaky)


# The original implementation's network, written out by hand from its source:
# scarletteshu/Pytorch-bcvae, bcvae2d.py, class ConditionalVAE(in_channels=1, latent_dim=6)
# as run.py builds it (hidden_dims [32, 64, 128, 256]; nn.Conv2d/ConvTranspose2d with their
# default bias=True; nn.LeakyReLU() with its default slope 0.01). One row per layer, in
# forward order: (kind, arguments, output shape of one image). Its final Sigmoid is left
# out: our decoder returns the logit and the loss applies the sigmoid.
ORIGINAL_LAYERS = [
    ("Conv2d", (1, 32, 4, 2, 1, 0), (32, 32, 32)), ("BatchNorm2d", 32, None), ("LeakyReLU", 0.01, None),
    ("Conv2d", (32, 64, 4, 2, 1, 0), (64, 16, 16)), ("BatchNorm2d", 64, None), ("LeakyReLU", 0.01, None),
    ("Conv2d", (64, 128, 4, 2, 1, 0), (128, 8, 8)), ("BatchNorm2d", 128, None), ("LeakyReLU", 0.01, None),
    ("Conv2d", (128, 256, 4, 2, 1, 0), (256, 4, 4)), ("BatchNorm2d", 256, None), ("LeakyReLU", 0.01, None),
    ("Linear", (4096, 6), (6,)),                                   # fc_mu
    ("Linear", (4096, 6), (6,)),                                   # fc_var
    ("Linear", (6, 4096), (4096,)),                                # decoder_input, no activation
    ("ConvTranspose2d", (256, 128, 4, 2, 1, 0), (128, 8, 8)), ("BatchNorm2d", 128, None), ("LeakyReLU", 0.01, None),
    ("ConvTranspose2d", (128, 64, 4, 2, 1, 0), (64, 16, 16)), ("BatchNorm2d", 64, None), ("LeakyReLU", 0.01, None),
    ("ConvTranspose2d", (64, 32, 4, 2, 1, 0), (32, 32, 32)), ("BatchNorm2d", 32, None), ("LeakyReLU", 0.01, None),
    ("ConvTranspose2d", (32, 32, 4, 2, 1, 1), (32, 65, 65)), ("BatchNorm2d", 32, None), ("LeakyReLU", 0.01, None),
    ("Conv2d", (32, 1, 4, 1, 1, 0), (1, 64, 64)),
]


def _original_param_count() -> int:
    """Weights and biases of ORIGINAL_LAYERS, counted from the table (BatchNorm: γ and β)."""
    total = 0
    for kind, args, _ in ORIGINAL_LAYERS:
        if kind in ("Conv2d", "ConvTranspose2d"):
            c_in, c_out, k = args[:3]
            total += c_in * c_out * k * k + c_out
        elif kind == "Linear":
            total += args[0] * args[1] + args[1]
        elif kind == "BatchNorm2d":
            total += 2 * args
    return total


def _describe(m: nn.Module):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        pad = m.output_padding[0] if isinstance(m, nn.ConvTranspose2d) else 0
        assert m.bias is not None, "the original's convolutions have biases"
        return type(m).__name__, (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], pad)
    if isinstance(m, nn.Linear):
        return "Linear", (m.in_features, m.out_features)
    if isinstance(m, nn.BatchNorm2d):
        return "BatchNorm2d", m.num_features
    if isinstance(m, nn.LeakyReLU):
        return "LeakyReLU", m.negative_slope
    return None


def test_original_architecture_equals_the_original_layer_by_layer():
    model = VAE(arch="original")
    ours = [d for d in map(_describe, model.modules()) if d is not None]
    assert ours == [(kind, args) for kind, args, _ in ORIGINAL_LAYERS]
    assert not _layers(model, nn.ReLU)
    assert sum(p.numel() for p in model.parameters()) == _original_param_count() == 1_473_709
    # output shapes, layer by layer, through the decoder and the encoder
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in model.modules() if _describe(m) and not isinstance(m, (nn.BatchNorm2d, nn.LeakyReLU))]
    model.eval()(torch.rand(2, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert shapes == [shape for kind, _, shape in ORIGINAL_LAYERS if shape is not None]


def test_unknown_architecture_names_the_key():
    with pytest.raises(ValueError, match="model.arch.*'resnet'"):
        VAE(arch="resnet")


def test_the_config_offers_exactly_the_architectures_the_model_builds():
    from bcvae import config, model

    assert set(config.ARCHS) == set(model.BUILDERS) == set(model.ARCH_Z_DIM)


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
