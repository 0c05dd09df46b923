"""Training steps to time: the trainer's own loop, a public-style baseline, single-factor variants.

* :class:`TrainerSteps` runs the body of :meth:`bcvae.train.Trainer._train_epoch`
  (gather a batch from the bit-packed split, one optimisation step) with the
  trainer's own settings, so "fast path" numbers are what a run gets.
* :class:`PublicBaseline` is the same model and loss written the way the
  original implementation and typical public PyTorch code write it: the
  dataset as one float32 tensor ``(N, 1, 64, 64)``, a ``DataLoader`` with
  shuffling and default collation, eager mode, contiguous tensors, plain Adam.
* :class:`VariantStep` changes one setting at a time (channels_last, compile,
  fused Adam, threads, bf16 autocast) on the same model and data, to see what each buys.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bcvae import config
from bcvae.data import FoldData, epoch_order
from bcvae.losses import vae_loss
from bcvae.model import VAE
from bcvae.train import Trainer


_RUNS = tempfile.mkdtemp(prefix="bcvae-bench-")  # run directories of this process, removed at exit
atexit.register(shutil.rmtree, _RUNS, ignore_errors=True)


def bench_config(arch: str, z_dim: int, batch: int, cache_dir: str, subset: int, loss: dict | None = None,
                 **train) -> config.Config:
    """A run config for timing: no W&B, no progress bar, no evaluation, its own temporary run_dir.

    ``loss``: keys of the ``loss`` section (default: the capacity objective's defaults)."""
    return config.from_dict({
        "name": "bench", "run_dir": tempfile.mkdtemp(dir=_RUNS),
        "data": {"source": "procedural", "cache_dir": cache_dir, "subset": subset},
        "model": {"arch": arch, "z_dim": z_dim},
        "loss": dict(loss or {}),
        # 100 epochs: a long run, so every setting decides as it would for a real experiment
        "train": {"batch_size": batch, "epochs": 100, **train},
        "log": {"wandb_mode": "disabled", "progress": False},
        "eval": {"at_end": False},
    }, source="benchmarks")


class TrainerSteps:
    """One call = one training step of a :class:`~bcvae.train.Trainer`, data gathering included."""

    def __init__(self, cfg: config.Config):
        self.trainer = Trainer(cfg)
        self.order = epoch_order(len(self.trainer.split.train), cfg.seed, 0)
        self.i = 0

    def __call__(self) -> int:
        t = self.trainer
        x = t.split.train.batch(t._batch_indices(self.order, self.i), t.device)
        x = x.contiguous(memory_format=t.memory_format)
        t._guarded_step(x, None)
        t.step, self.i = t.step + 1, self.i + 1
        return x.shape[0]

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled (False after a fallback to eager)."""
        return self.trainer.train_model is not self.trainer.model_ddp


class _FloatImages(Dataset):
    """The original implementation's ``CustomTensorDataset``: one float32 image per index."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class PublicBaseline:
    """The training step as public implementations write it (see the module docstring).

    images : ``(N, 64, 64)`` uint8 — converted here to one float32 tensor, as those
    implementations do with the whole dataset (16 KiB per image).
    """

    def __init__(self, images: np.ndarray, batch: int, loss_cfg, arch: str = "burgess", z_dim: int = 10,
                 device: torch.device = torch.device("cpu")):
        torch.manual_seed(0)
        self.device = device
        data = torch.from_numpy(images).unsqueeze(1).float()  # (N, 1, 64, 64) float32
        self.loader = DataLoader(_FloatImages(data), batch_size=batch, shuffle=True, drop_last=True)
        self.batches = iter(self.loader)
        self.model = VAE(z_dim, arch).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=5e-4)
        self.loss_cfg, self.step = loss_cfg, 0

    def next_batch(self) -> torch.Tensor:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def __call__(self) -> int:
        x = self.next_batch().to(self.device)
        logits, mu, logvar, z = self.model(x)
        loss, _ = vae_loss(self.loss_cfg, x, logits, mu, logvar, z, self.step)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        return x.shape[0]


class VariantStep:
    """A training step with one choice of each speed setting, on batches of ``data``."""

    def __init__(self, data: FoldData, batch: int, loss_cfg, *, channels_last: bool, compile: bool,
                 fused: bool, threads: int, bf16: bool = False, arch: str = "burgess", z_dim: int = 10):
        torch.manual_seed(0)
        self.bf16 = bf16
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        vae = VAE(z_dim, arch).to(memory_format=self.fmt)
        self.opt = torch.optim.Adam(vae.parameters(), lr=5e-4, fused=fused, foreach=None if fused else True)
        self.forward = torch.compile(vae) if compile else vae
        self.data, self.batch, self.loss_cfg, self.threads = data, batch, loss_cfg, threads
        self.order = np.random.default_rng(0).permutation(len(data))
        self.i = self.step = 0
        self.z_dim = vae.z_dim

    def __call__(self) -> int:
        torch.set_num_threads(self.threads)  # every variant sets its own: they run in turns
        idx = np.take(self.order, np.arange(self.i, self.i + self.batch), mode="wrap")
        x = self.data.batch(idx).contiguous(memory_format=self.fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):  # as train.amp=bf16
            logits, mu, logvar, z = self.forward(x, torch.randn(self.batch, self.z_dim))
            loss, _ = vae_loss(self.loss_cfg, x, logits.float(), mu.float(), logvar.float(), z.float(), self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.i, self.step = self.i + self.batch, self.step + 1
        return self.batch
