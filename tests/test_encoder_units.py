"""bcvae encoder-units: ReLU units that are on, and that differ between inputs, against hand-made
layers with known answers; a dead layer really stops every gradient in front of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bcvae import encoder_units
from bcvae.model import VAE

ROOT = Path(__file__).resolve().parents[1]


def _hand_made() -> nn.Sequential:
    """Linear(2 → 3) + ReLU: unit 0 = x₀ (on where x₀ > 0), unit 1 = −1 − |weights|·x ≤ −1 (never on
    for x in [0, 1]²), unit 2 = 1 whatever x (on, never differs); then Linear(3 → 1) = unit 2 only."""
    layers = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 0.0]]))
        layers[0].bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
        layers[2].weight.copy_(torch.tensor([[0.0, 0.0, 2.0]]))
        layers[2].bias.zero_()
    return layers


def test_known_answer_of_a_hand_made_layer():
    x = torch.tensor([[0.0, 0.5], [0.7, 0.2], [0.3, 1.0]])
    rows, spread = encoder_units.rectifier_activity(_hand_made(), [x[:2], x[2:]])   # two batches
    assert rows == [{"index": 1, "after": "Linear 2→3", "kind": "ReLU", "slope": 0.0, "units": 3, "on": 2, "varying": 1}]
    assert spread == 0.0                       # the output reads unit 2 only: 2 for every input
    assert encoder_units.dead_layers(rows) == []


def test_known_answer_of_a_hand_made_leaky_layer():
    """The same weights with LeakyReLU(0.1): unit 1 is still never on, but its output
    0.1·(−1 − x₀ − x₁) differs between inputs; unit 0 is x₀ for x₀ ≥ 0, unit 2 is 1."""
    layers = _hand_made()
    layers[1] = nn.LeakyReLU(0.1)
    x = torch.tensor([[0.0, 0.5], [0.7, 0.2], [0.3, 1.0]])
    rows, spread = encoder_units.rectifier_activity(layers, [x])
    assert rows == [{"index": 1, "after": "Linear 2→3", "kind": "LeakyReLU(0.1)", "slope": 0.1, "units": 3,
                     "on": 2, "varying": 2}]
    assert spread == 0.0
    assert encoder_units.dead_layers(rows) == encoder_units.starved_layers(rows) == []


def test_units_are_named_by_the_weight_layer_before_them_past_batchnorm():
    rows, _ = encoder_units.rectifier_activity(VAE(arch="original").encoder, [torch.rand(2, 1, 64, 64)])
    assert [r["after"] for r in rows] == ["Conv2d 1→32", "Conv2d 32→64", "Conv2d 64→128", "Conv2d 128→256"]
    assert {r["kind"] for r in rows} == {"LeakyReLU(0.01)"}


def test_a_fresh_encoder_is_alive_and_reads_the_image():
    torch.manual_seed(0)
    x = next(iter(encoder_units.image_batches(np.array([[0, 0, 2, 5, 10, 20], [0, 2, 5, 30, 3, 7]]))))
    rows, spread = encoder_units.rectifier_activity(VAE().encoder, [x])
    assert [r["after"] for r in rows] == ["Conv2d 1→32", "Conv2d 32→32", "Conv2d 32→32", "Conv2d 32→32",
                                          "Linear 512→256", "Linear 256→256"]
    assert all(r["on"] > r["units"] // 4 and r["varying"] > 0 for r in rows)
    assert spread > 0


def test_a_dead_layer_makes_the_output_constant_and_stops_every_gradient_before_it():
    """Push the third convolution's biases far below anything its inputs can reach: no unit there
    is on, the encoder's output is the same for every image, and a loss on it sends exactly zero
    gradient to the first two convolutions — the reason such a collapse is permanent."""
    torch.manual_seed(0)
    encoder = VAE().encoder
    with torch.no_grad():
        encoder[4].bias.fill_(-1e4)
    classes = np.stack([np.random.default_rng(1).integers(0, n, 16) for n in (1, 3, 6, 40, 32, 32)], axis=1)
    x = torch.cat(list(encoder_units.image_batches(classes, chunk=5)))
    rows, spread = encoder_units.rectifier_activity(encoder, encoder_units.image_batches(classes, chunk=5))
    by_index = {r["index"]: r for r in rows}
    assert by_index[5]["on"] == 0 and by_index[5]["varying"] == 0
    assert all(r["varying"] == 0 for r in rows if r["index"] > 5)
    assert by_index[1]["varying"] > 0 and spread < 1e-6     # batches of 5 and of 1: the last bits may differ
    assert [r["index"] for r in encoder_units.dead_layers(rows)] == [5]
    loss = (encoder(x) - torch.randn(len(x), 20)).pow(2).sum()
    loss.backward()
    for conv in (encoder[0], encoder[2], encoder[4]):
        assert torch.count_nonzero(conv.weight.grad) == 0 and torch.count_nonzero(conv.bias.grad) == 0
    assert torch.count_nonzero(encoder[-1].bias.grad) > 0        # the layers after it still learn a constant


def test_a_leaky_layer_with_no_unit_on_is_starved_not_cut():
    """The dead-layer experiment above on ``burgess_leaky``: no unit of the third convolution is
    on, yet the output still depends on the image and the first convolutions still get a
    gradient, through the units' 0.01 slope."""
    torch.manual_seed(0)
    encoder = VAE(arch="burgess_leaky").encoder
    with torch.no_grad():
        encoder[4].bias.fill_(-10.0)
    x = torch.cat(list(encoder_units.image_batches(np.array([[0, 0, 2, 5, 10, 20], [0, 2, 5, 30, 3, 7]]))))
    rows, spread = encoder_units.rectifier_activity(encoder, [x])
    by_index = {r["index"]: r for r in rows}
    assert by_index[5]["on"] == 0 and by_index[5]["varying"] > 0 and spread > 1e-6
    assert encoder_units.dead_layers(rows) == []
    assert [r["index"] for r in encoder_units.starved_layers(rows)] == [5]
    (encoder(x) - torch.randn(len(x), 20)).pow(2).sum().backward()
    assert torch.count_nonzero(encoder[0].weight.grad) > 0


def test_a_leaky_layer_of_slope_zero_is_dead_like_a_relu():
    """``LeakyReLU(0)`` is a ReLU by another name: with no unit on it cuts the encoder, and the
    report must say so from the slope, not from the class's name."""
    layers = _hand_made()
    layers[1] = nn.LeakyReLU(0.0)
    with torch.no_grad():
        layers[0].bias.fill_(-10.0)
    rows, spread = encoder_units.rectifier_activity(layers, [torch.rand(4, 2)])
    assert rows[0]["on"] == 0 and rows[0]["slope"] == 0.0 and spread == 0.0
    assert encoder_units.dead_layers(rows) == rows and encoder_units.starved_layers(rows) == []


def test_cli_reports_a_run_and_refuses_bad_images_in_one_line(smoke_run, capsys):
    from bcvae import cli

    assert cli.main(["encoder-units", str(smoke_run), str(ROOT / "pretrained" / "beta4"), "--images", "64"]) == 0
    out = capsys.readouterr().out
    assert "(step 40), 64 images:" in out and "(step 100,000), 64 images:" in out
    assert out.count("| Conv2d 32→32 (layer 5) | ReLU | 32 |") == 2
    assert "no unit after" not in out
    assert cli.main(["encoder-units", str(smoke_run), "--images", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--images must be >= 0" in err[0], err


def test_rectifier_activity_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        encoder_units.rectifier_activity(_hand_made(), [])
