"""Gaussian-posterior VAE for 64×64 dSprites and the FactorVAE discriminator.

Three architectures share one :class:`VAE`:

* ``"burgess"`` (default): Burgess et al. 2018, "Understanding disentangling in
  β-VAE", appendix A.1 — ReLU convolutions, no normalisation.
* ``"burgess_leaky"``: the same with leaky encoder units (slope 0.01), so that no encoder
  layer can die for good under large gradients (``bcvae encoder-units``); not in the paper.
* ``"original"``: the conv / BatchNorm / LeakyReLU network of the original
  implementation this repository started from, layer for layer (latent size 6 there).

Both decoders output Bernoulli *logits*; the losses apply the sigmoid.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

ARCH_Z_DIM = {"burgess": 10, "burgess_leaky": 10, "original": 6}  # latent size each architecture was published with
LEAKY_SLOPE = 0.01
"""Negative slope of ``burgess_leaky``'s encoder units (nn.LeakyReLU's default)."""


def _burgess(z_dim: int, encoder_slope: float = 0.0) -> tuple[nn.Sequential, nn.Sequential]:
    """Burgess et al. 2018, A.1: (B,1,64,64) -> (B,2·z_dim) and (B,z_dim) -> (B,1,64,64).

    ``encoder_slope`` > 0 replaces the encoder's ReLUs by leaky ones (``burgess_leaky``, not in the
    paper): a leaky unit passes gradient for every input, so no encoder layer can die for good
    (``bcvae encoder-units``). The decoder is the paper's either way."""
    def act() -> nn.Module:
        return nn.LeakyReLU(encoder_slope) if encoder_slope else nn.ReLU()

    def conv(c_in: int) -> list[nn.Module]:  # each halves the side: 64 -> 32 -> 16 -> 8 -> 4
        return [nn.Conv2d(c_in, 32, 4, 2, 1), act()]

    def deconv(c_out: int) -> list[nn.Module]:  # each doubles the side: 4 -> 8 -> 16 -> 32 -> 64
        return [nn.ConvTranspose2d(32, c_out, 4, 2, 1), nn.ReLU()]

    encoder = nn.Sequential(
        *conv(1), *conv(32), *conv(32), *conv(32), nn.Flatten(),           # (B, 32·4·4 = 512)
        nn.Linear(512, 256), act(), nn.Linear(256, 256), act(),
        nn.Linear(256, 2 * z_dim))                                         # (μ, log σ²)
    decoder = nn.Sequential(
        nn.Linear(z_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 512), nn.ReLU(), nn.Unflatten(1, (32, 4, 4)),
        *deconv(32), *deconv(32), *deconv(32), nn.ConvTranspose2d(32, 1, 4, 2, 1))  # logits
    return encoder, decoder


class _MeanAndLogVarHeads(nn.Module):
    """Two linear heads on one feature vector, (B, F) -> (B, 2·z_dim) = [μ, log σ²]:
    the original implementation's separate ``fc_mu`` and ``fc_var`` layers."""

    def __init__(self, features: int, z_dim: int) -> None:
        super().__init__()
        self.fc_mu = nn.Linear(features, z_dim)
        self.fc_var = nn.Linear(features, z_dim)

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([self.fc_mu(h), self.fc_var(h)], dim=1)


def _original(z_dim: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The original implementation's network, layer for layer (its ``bcvae2d.py``).

    Encoder: 4 × [Conv2d k4 s2 p1 (with bias) + BatchNorm + LeakyReLU(0.01)], channels
    32-64-128-256 (64 → 4 px), then separate linear heads for μ and log σ² on the 4096
    features. Decoder: Linear(z, 4096) with no activation, 3 × [ConvTranspose2d k4 s2 p1
    + BatchNorm + LeakyReLU(0.01)] 256-128-64-32 (4 → 32 px), then ConvTranspose2d(32→32,
    output_padding=1) (→ 65 px) + BatchNorm + LeakyReLU and Conv2d(32→1, k4, p1) (→ 64 px).
    The original ends in a sigmoid; here the last layer's output is the logit and the
    losses apply the sigmoid, which is the same function.
    """
    slope = 0.01                               # nn.LeakyReLU()'s default, as the original uses it
    chans = (1, 32, 64, 128, 256)
    enc: list[nn.Module] = []
    for c_in, c_out in zip(chans, chans[1:]):
        enc += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(slope)]
    encoder = nn.Sequential(*enc, nn.Flatten(), _MeanAndLogVarHeads(256 * 16, z_dim))
    dec: list[nn.Module] = [nn.Linear(z_dim, 256 * 16), nn.Unflatten(1, (256, 4, 4))]
    for c_in, c_out in zip((256, 128, 64), (128, 64, 32)):
        dec += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(slope)]
    dec += [nn.ConvTranspose2d(32, 32, 4, 2, 1, output_padding=1), nn.BatchNorm2d(32), nn.LeakyReLU(slope),
            nn.Conv2d(32, 1, 4, 1, 1)]          # 65 -> 64 px: logits
    return encoder, nn.Sequential(*dec)


BUILDERS = {"burgess": _burgess, "burgess_leaky": functools.partial(_burgess, encoder_slope=LEAKY_SLOPE),
            "original": _original}
"""model.arch -> z_dim -> (encoder, decoder)."""


class VAE(nn.Module):
    """VAE with diagonal Gaussian posterior q(z|x) = N(μ, diag σ²) and prior N(0, I).

    Parameters
    ----------
    z_dim : latent size; ``None`` takes the architecture's published size (burgess 10, original 6).
    arch : ``"burgess"``, ``"burgess_leaky"`` (its encoder's units leaky) or ``"original"``.
    """

    def __init__(self, z_dim: int | None = None, arch: str = "burgess") -> None:
        super().__init__()
        if arch not in BUILDERS:
            raise ValueError(f"model.arch must be one of {', '.join(map(repr, BUILDERS))}, got {arch!r}")
        build = BUILDERS[arch]
        self.arch = arch
        self.z_dim = ARCH_Z_DIM[arch] if z_dim is None else int(z_dim)
        if self.z_dim < 1:
            raise ValueError(f"model.z_dim must be >= 1, got {z_dim!r}")
        self.encoder, self.decoder = build(self.z_dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,1,64,64) in [0,1] -> (μ, log σ²), each (B, z_dim); μ is the representation."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """z (B, z_dim) -> Bernoulli logits (B,1,64,64)."""
        return self.decoder(z)

    @staticmethod
    def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
        """z = μ + σ·ε (Kingma & Welling 2014), (B, z_dim); ε ~ N(0, I) drawn here unless given."""
        eps = torch.randn_like(mu) if eps is None else eps
        return mu + torch.exp(0.5 * logvar) * eps

    def latent_entries(self, j: int) -> list[tuple[str, tuple]]:
        """The parameter entries that serve latent ``j`` alone, as (parameter name, index):
        its rows of the encoder's μ and log σ² heads (weights and biases) and its column of
        the decoder's first linear layer."""
        if not 0 <= j < self.z_dim:
            raise ValueError(f"latent {j} out of range 0..{self.z_dim - 1}")
        head = len(self.encoder) - 1
        if self.arch == "burgess":                     # one Linear(256, 2·z_dim): [μ rows, log σ² rows]
            rows = [(f"encoder.{head}.{p}", (r,)) for r in (j, self.z_dim + j) for p in ("weight", "bias")]
        else:                                          # _MeanAndLogVarHeads: fc_mu and fc_var
            rows = [(f"encoder.{head}.{fc}.{p}", (j,)) for fc in ("fc_mu", "fc_var") for p in ("weight", "bias")]
        return rows + [("decoder.0.weight", (slice(None), j))]

    def redraw_latents(self, dims: list[int], seed: int) -> None:
        """Re-draw the parameters of latents ``dims`` (:meth:`latent_entries`) as a new model
        built with ``torch.manual_seed(seed)`` has them, leaving every other entry as it is:
        those latents start again from the architecture's initialisation."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = dict(VAE(self.z_dim, self.arch).named_parameters())
        params = dict(self.named_parameters())
        with torch.no_grad():
            for j in dims:
                for name, index in self.latent_entries(j):
                    params[name][index] = fresh[name][index].to(params[name].device)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B,1,64,64) -> (logits (B,1,64,64), μ, log σ², z), z = μ + σ·ε.

        Always samples, in eval mode too, so validation losses estimate the same ELBO.
        The trainer passes ε (B, z_dim) itself: processes of a multi-process run then
        share one global draw, and compiled graphs hold no random number generation
        (inductor's generator would give other samples than eager).
        """
        mu, logvar = self.encode(x)
        z = self.reparameterise(mu, logvar, eps)
        return self.decode(z), mu, logvar, z


class Discriminator(nn.Module):
    """FactorVAE discriminator (Kim & Mnih 2018, appendix): ``depth`` linear layers of
    ``width`` units with LeakyReLU(0.2); (B, z_dim) -> (B, 2) logits.

    Logit 0 means "z drawn from q(z)", logit 1 "z drawn from ∏_j q(z_j)" (permuted).
    """

    def __init__(self, z_dim: int = 10, width: int = 1000, depth: int = 6) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"discriminator depth must be >= 2, got {depth!r}")
        dims = [z_dim] + [width] * (depth - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, z: Tensor) -> Tensor:
        """z (B, z_dim) -> logits (B, 2)."""
        return self.net(z)


def discriminator_for(objective: str, z_dim: int) -> Discriminator | None:
    """The discriminator ``objective`` trains beside the VAE, freshly initialised, or None.

    Only FactorVAE (``"factor"``) has one: its total-correlation estimate is the
    discriminator's logit difference. The one place that rule lives: the trainer builds
    from it and held-out evaluation asks it whether a checkpoint must hold one.
    """
    return Discriminator(z_dim) if objective == "factor" else None
