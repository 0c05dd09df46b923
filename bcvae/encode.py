"""Encoding images to posterior means for the metrics, compiled when it pays.

:func:`make_encode` turns uint8 images into posterior means in large
inference-mode batches; :class:`Encoder` compiles ``model.encode`` once enough
images justify it (at once on CUDA) and falls back to eager mode if compiling
fails. :func:`encode_all` gives the posterior (μ, log σ²) of a whole
dataset in the real file's order. :func:`image_source` gives the metrics the images a run trained on.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from bcvae.data import FACTOR_SIZES, N_IMAGES, FoldData, render_dsprites

log = logging.getLogger("bcvae")

ENCODE_COMPILE_AFTER = 50_000
"""Images ``make_encode(compile="auto")`` encodes on a CPU before compiling the encoder: compiling
costs 5-20 s there and then encodes about 1.6× faster (benchmarks/README.md), so only large
evaluations (the metrics' defaults encode most of the dataset) win."""


class Encoder:
    """``model.encode`` ``(B, 1, 64, 64)`` -> (μ, log σ²), compiled once it pays; eager again if compiling fails."""

    def __init__(self, model: nn.Module, device: torch.device, compile: str, batch_size: int,
                 fmt: torch.memory_format):
        self.model, self.device, self.policy, self.batch_size, self.fmt = model, device, compile, batch_size, fmt
        self.compiled, self.images = None, 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        self.images += n
        due = self.policy == "on" or (self.policy == "auto" and (
            self.device.type == "cuda" or self.images > ENCODE_COMPILE_AFTER))
        if self.compiled is None and due:
            self.compiled = torch.compile(self.model.encode)
        if self.compiled:
            try:  # always a full batch: one shape, one compilation
                full = x
                if n < self.batch_size:
                    full = torch.cat([x, x.new_zeros((self.batch_size - n,) + x.shape[1:])])
                mu, logvar = self.compiled(full.contiguous(memory_format=self.fmt))
                return mu[:n], logvar[:n]
            except Exception as err:  # compiler unavailable or failing on this platform
                log.warning("torch.compile of the encoder failed (%s); encoding in eager mode", type(err).__name__)
                self.compiled = False
        return self.model.encode(x)


def make_encode(model: nn.Module, device: torch.device, batch_size: int = 1024, channels_last: bool = True,
                compile: str = "auto") -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images ``(N, 64, 64)`` -> posterior means ``(N, D)`` float32, in large inference-mode batches.

    ``compile``: ``"on"``, ``"off"`` or ``"auto"`` (at once on CUDA; on a CPU after
    :data:`ENCODE_COMPILE_AFTER` images). A failing compiler falls back to eager mode.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder = Encoder(model, device, compile, batch_size, fmt)

    @torch.inference_mode()
    def encode(images: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            if device.type == "cuda":
                chunk = chunk.pin_memory()  # lets the copy below run asynchronously
            x = chunk.to(device, non_blocking=True).unsqueeze(1).float().contiguous(memory_format=fmt)
            out.append(encoder(x)[0].float().cpu())
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    return encode


def image_source(provenance: dict, all_images: Callable[[], FoldData]) -> Callable[[np.ndarray], np.ndarray]:
    """latents_classes ``(N, 6)`` -> images ``(N, 64, 64)`` from the run's own data source.

    Procedural runs render (identical to their cache); runs on the real file
    look the images up in the full cache, so metrics see the data trained on.
    """
    if provenance.get("source") == "procedural":
        return render_dsprites
    data = all_images()
    if len(data) < N_IMAGES:  # a subset cannot answer for every factor combination
        log.warning("metrics use rendered images: the run's data is a %d-image subset of the real file", len(data))
        return render_dsprites
    position = np.empty(int(data.index.max()) + 1, np.int64)
    position[data.index] = np.arange(len(data.index))
    return lambda classes: data.images(position[np.ravel_multi_index(np.asarray(classes).T, FACTOR_SIZES)])


@torch.inference_mode()
def encode_all(model: nn.Module, data: FoldData, device: torch.device, batch_size: int = 1024):
    """Posterior (μ, log σ²) of every image, each ``(737280, D)`` float32 in the real file's order."""
    encoder = Encoder(model, device, "auto", batch_size, torch.channels_last)  # compiles once it pays
    from tqdm.auto import tqdm

    mus, logvars = [], []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=f"encoding {len(data):,} images", unit="batch", leave=False,
                      disable=len(starts) < 20):
        x = data.batch(np.arange(start, min(start + batch_size, len(data))), device)
        mu, logvar = encoder(x.contiguous(memory_format=torch.channels_last))
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    order = np.argsort(data.index)  # cache order -> file order
    return torch.cat(mus).numpy()[order], torch.cat(logvars).numpy()[order]
