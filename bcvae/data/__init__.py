"""dSprites data: the real npz file, the procedural renderer, fold caches and batches.

Public API (other modules and tests use exactly these names)::

    render_dsprites(latents_classes)      (N, 6) int -> (N, 64, 64) uint8 0/1
    sprite_area(images)                   (N, 64, 64) -> (N,) pixels each sprite covers
    render_full_dataset()                 all 737,280 images in the real file's order
    load_dsprites_npz(path)               validated real file
    ensure_cache(data_cfg)                HDF5 fold cache, built once
    load_split(data_cfg)                  training folds + held-out fold, in RAM
    load_all(data_cfg)                    every image, for evaluation
    epoch_order(n, seed, epoch)           the data order, a pure function
"""

from bcvae.data.dsprites import (
    DSPRITES_FILENAME,
    DatasetError,
    compare_renderer,
    download_dsprites,
    file_sha256,
    load_dsprites_npz,
)
from bcvae.data.folds import cache_path, ensure_cache
from bcvae.data.loader import FoldData, Split, epoch_order, load_all, load_split
from bcvae.data.render import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    N_IMAGES,
    RENDERER_VERSION,
    all_latents_classes,
    latents_values,
    render_dsprites,
    render_full_dataset,
    sprite_area,
)

__all__ = [
    "DSPRITES_FILENAME", "DatasetError", "compare_renderer", "download_dsprites", "file_sha256",
    "load_dsprites_npz", "cache_path", "ensure_cache", "FoldData", "Split", "epoch_order", "load_all",
    "load_split", "FACTOR_NAMES", "FACTOR_SIZES", "N_IMAGES", "RENDERER_VERSION", "all_latents_classes",
    "latents_values", "render_dsprites", "render_full_dataset", "sprite_area",
]
