"""In-RAM splits and batches: fold membership, pixel values, data order, errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from bcvae.data.dsprites import DatasetError
from bcvae.data.folds import assign_folds, pack_images
from bcvae.data.loader import FoldData, epoch_order, load_all, load_split
from bcvae.data.render import (
    FACTOR_SIZES,
    N_IMAGES,
    RENDERER_VERSION,
    all_latents_classes,
    render_dsprites,
)


def make_cfg(tmp_path: Path, **overrides) -> SimpleNamespace:
    """A small procedural DataConfig stand-in whose cache lives under ``tmp_path``."""
    fields = dict(source="procedural", path=str(tmp_path / "absent.npz"),
                  cache_dir=str(tmp_path / "cache"), k=5, fold=2, fold_seed=0, subset=500)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def rendered(index: np.ndarray) -> np.ndarray:
    """Independent truth: the renderer's images of dataset indices ``index``, (N, 64, 64)."""
    return render_dsprites(np.stack(np.unravel_index(index, FACTOR_SIZES), axis=1))


# ---------------------------------------------------------------- splits

def test_split_holds_out_one_fold_and_trains_on_the_rest(tmp_path):
    cfg = make_cfg(tmp_path)
    split = load_split(cfg)
    index, offsets = assign_folds(cfg.k, cfg.fold_seed, cfg.subset)
    held_out = index[offsets[2]:offsets[3]]
    assert (len(split.train), len(split.val)) == (400, 100)
    assert np.array_equal(split.val.index, held_out)
    assert not set(split.train.index.tolist()) & set(split.val.index.tolist())
    assert np.array_equal(np.sort(np.concatenate([split.train.index, split.val.index])),
                          np.sort(index))
    for part in (split.train, split.val):
        assert np.array_equal(part.factors,
                              np.stack(np.unravel_index(part.index, FACTOR_SIZES), axis=1))
        assert np.array_equal(part.images(np.arange(len(part))), rendered(part.index))


def test_every_fold_is_validated_exactly_once(tmp_path):
    seen = [load_split(make_cfg(tmp_path, fold=f, subset=103)).val.index for f in range(5)]
    assert sorted(len(v) for v in seen) == [20, 20, 21, 21, 21]
    assert len(np.unique(np.concatenate(seen))) == 103


def test_split_provenance(tmp_path):
    cfg = make_cfg(tmp_path, fold_seed=4)
    prov = load_split(cfg).provenance
    assert prov["source"] == "procedural" and prov["renderer_version"] == RENDERER_VERSION
    assert (prov["fold_seed"], prov["k"], prov["subset"], prov["fold"]) == (4, 5, 500, 2)
    assert Path(prov["cache_file"]).is_file()


def test_load_all_is_every_image_of_the_cache(tmp_path):
    cfg = make_cfg(tmp_path)
    everything = load_all(cfg)
    split = load_split(cfg)
    assert len(everything) == 500
    assert np.array_equal(np.sort(everything.index),
                          np.sort(np.concatenate([split.train.index, split.val.index])))


@pytest.mark.parametrize("fold", [-1, 5, 12])
def test_fold_out_of_range_names_key_and_range(tmp_path, fold):
    with pytest.raises(ValueError, match=r"data\.fold.*0\.\.4"):
        load_split(make_cfg(tmp_path, fold=fold))
    assert not Path(tmp_path / "cache").exists()  # rejected before any work


def test_k_below_two_names_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.k"):
        load_split(make_cfg(tmp_path, k=1, fold=0))


def test_unreadable_cache_during_read_is_a_dataset_error(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    load_split(cfg)

    def fail(*args, **kwargs):
        raise OSError("Can't read data (inflate() failed)")
    monkeypatch.setattr(h5py.Dataset, "read_direct", fail)
    with pytest.raises(DatasetError, match="fold cache .*could not be read"):
        load_split(cfg)


# ---------------------------------------------------------------- batches

def test_batch_is_float_images_of_the_requested_rows(tmp_path):
    split = load_split(make_cfg(tmp_path))
    idx = np.array([5, 0, 399, 5, 17])
    x = split.train.batch(idx, "cpu")
    assert x.shape == (5, 1, 64, 64) and x.dtype == torch.float32 and x.device.type == "cpu"
    expected = torch.from_numpy(rendered(split.train.index[idx])).float().unsqueeze(1)
    assert torch.equal(x, expected)
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}


def test_batch_pixel_positions_follow_row_major_image_layout():
    # One lit pixel per image at known (row, col): catches any bit-order slip.
    where = [(0, 0), (0, 7), (0, 8), (3, 62), (63, 63), (40, 1)]
    imgs = np.zeros((len(where), 64, 64), dtype=np.uint8)
    for i, (r, c) in enumerate(where):
        imgs[i, r, c] = 1
    data = FoldData(pack_images(imgs), np.zeros((len(where), 6), np.int64),
                    np.arange(len(where), dtype=np.int64))
    x = data.batch(np.arange(len(where)))
    for i, (r, c) in enumerate(where):
        assert x[i, 0, r, c] == 1.0 and x[i].sum() == 1.0
    assert np.array_equal(data.images(np.arange(len(where))), imgs)


def test_fold_data_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="512"):
        FoldData(np.zeros((3, 64, 64), np.uint8), np.zeros((3, 6), np.int64),
                 np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="factors"):
        FoldData(np.zeros((3, 512), np.uint8), np.zeros((2, 6), np.int64),
                 np.zeros(3, np.int64))


# ---------------------------------------------------------------- data order

def test_epoch_order_is_a_pure_permutation():
    order = epoch_order(1000, seed=7, epoch=3)
    assert np.array_equal(np.sort(order), np.arange(1000))
    assert np.array_equal(order, epoch_order(1000, seed=7, epoch=3))
    assert not np.array_equal(order, epoch_order(1000, seed=7, epoch=4))
    assert not np.array_equal(order, epoch_order(1000, seed=8, epoch=3))


def test_epoch_order_does_not_depend_on_global_rng_state():
    np.random.seed(0)
    torch.manual_seed(0)
    first = epoch_order(50, seed=1, epoch=0)
    np.random.seed(123)
    np.random.rand(10)
    assert np.array_equal(first, epoch_order(50, seed=1, epoch=0))


def test_epoch_order_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed"):
        epoch_order(10, seed=-1, epoch=0)


# ---------------------------------------------------------------- full dataset

@pytest.mark.slow
def test_full_procedural_split(tmp_path):
    split = load_split(make_cfg(tmp_path, subset=0, k=10, fold=0))
    assert (len(split.train), len(split.val)) == (N_IMAGES * 9 // 10, N_IMAGES // 10)
    assert np.array_equal(np.sort(np.concatenate([split.train.index, split.val.index])),
                          np.arange(N_IMAGES))
    assert np.array_equal(split.train.factors, all_latents_classes()[split.train.index])
    sample = np.random.default_rng(0).choice(len(split.train), 256, replace=False)
    assert np.array_equal(split.train.images(sample), rendered(split.train.index[sample]))


def test_accepts_the_project_data_config(tmp_path):
    from bcvae.config import DataConfig

    cfg = DataConfig(source="procedural", cache_dir=str(tmp_path), k=4, fold=3, subset=200)
    split = load_split(cfg)
    assert (len(split.train), len(split.val)) == (150, 50)
