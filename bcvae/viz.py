"""Pictures of a model: reconstructions, latent traversals (grid + GIF).

The array builders here return uint8 images, ready for W&B (which logs float
images as black) and for PNG/GIF files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile ``(N, H, W)`` images in [0, 1] (or 0/1 uint8) into one uint8 ``(H', W')`` image.

    Rows are filled left to right; a ``pad``-pixel grey border separates tiles.
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = img
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


@torch.no_grad()
def reconstructions(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Decoder means for the posterior means of ``x``.

    ``x`` is ``(B, 1, 64, 64)`` float; returns ``(B, 64, 64)`` float32 in [0, 1].
    Uses μ (no sampling), so drawing pictures never consumes random numbers.
    """
    mu, _ = model.encode(x)
    return torch.sigmoid(model.decode(mu)).float().squeeze(1).cpu().numpy()


def reconstruction_grid(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Originals in the top row, their reconstructions below: uint8 ``(2·66+2, B·66+2)``."""
    recon = reconstructions(model, x)
    originals = x.float().squeeze(1).cpu().numpy()
    return image_grid(np.concatenate([originals, recon]), ncols=len(originals))


@torch.no_grad()
def traversal_frames(model: torch.nn.Module, x: torch.Tensor, dims: Sequence[int],
                     values: np.ndarray) -> np.ndarray:
    """Decode μ(x) with one latent at a time set to each of ``values``.

    ``x`` is one image ``(1, 1, 64, 64)``; returns ``(len(dims), len(values), 64, 64)``
    float32 in [0, 1]: row i varies latent ``dims[i]``.
    """
    mu, _ = model.encode(x)
    dims = list(dims)
    z = mu.repeat(len(dims) * len(values), 1)
    for i, d in enumerate(dims):
        z[i * len(values):(i + 1) * len(values), d] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
    frames = torch.sigmoid(model.decode(z)).float().squeeze(1).cpu().numpy()
    return frames.reshape(len(dims), len(values), *frames.shape[-2:])


def traversal_grid(frames: np.ndarray) -> np.ndarray:
    """``(R, C, H, W)`` traversal frames -> one uint8 grid, one latent per row."""
    rows, cols = frames.shape[:2]
    return image_grid(frames.reshape(rows * cols, *frames.shape[2:]), ncols=cols)


def write_traversal_gif(frames: np.ndarray, path: Path, duration_ms: int = 120) -> Path:
    """Animated GIF of ``(R, C, H, W)`` traversals: frame j shows column j of every row
    side by side, sweeping forward then back."""
    from PIL import Image

    rows, cols = frames.shape[:2]
    strips = [image_grid(frames[:, j], ncols=rows) for j in range(cols)]
    strips = strips + strips[-2:0:-1]  # ping-pong
    pil = [Image.fromarray(s) for s in strips]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=duration_ms, loop=0)
    return path
