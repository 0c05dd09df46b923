"""bcvae: disentangled VAEs on dSprites (β-VAE, capacity-annealed β-VAE, FactorVAE, β-TCVAE)."""

__version__ = "0.1.0"
