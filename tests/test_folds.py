"""HDF5 fold cache: assignment, round trip against the renderer, rebuilds, locking, disk full."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from bcvae.data import folds
from bcvae.data.folds import (
    CACHE_VERSION,
    assign_folds,
    cache_path,
    ensure_cache,
    read_provenance,
    resolve_source,
    unpack_images,
)
from bcvae.data.render import (
    FACTOR_SIZES,
    N_IMAGES,
    RENDERER_VERSION,
    all_latents_classes,
    render_dsprites,
)

REPO = Path(__file__).resolve().parents[1]


def make_cfg(tmp_path: Path, **overrides) -> SimpleNamespace:
    """A small procedural DataConfig stand-in whose cache lives under ``tmp_path``."""
    fields = dict(source="procedural", path=str(tmp_path / "absent.npz"),
                  cache_dir=str(tmp_path / "cache"), k=5, fold=0, fold_seed=0, subset=600)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def read_cache(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in ("images", "latents_classes", "index",
                                                 "fold_offsets")}


def count_builds(monkeypatch) -> list:
    """Record every call of ``folds._build`` (still building)."""
    calls = []
    real_build = folds._build

    def build(*args):
        calls.append(args)
        real_build(*args)
    monkeypatch.setattr(folds, "_build", build)
    return calls


# ---------------------------------------------------------------- fold assignment

def test_assign_folds_disjoint_covering_near_equal():
    index, offsets = assign_folds(k=7, fold_seed=3, subset=1000)
    sizes = np.diff(offsets)
    assert offsets[0] == 0 and offsets[-1] == 1000 == len(index)
    assert set(sizes.tolist()) == {142, 143}  # 1000 = 6 * 143 + 142 in some order
    assert len(np.unique(index)) == 1000  # disjoint folds, no image twice
    assert index.min() >= 0 and index.max() < N_IMAGES


def test_assign_folds_full_dataset_covers_every_image_once():
    index, offsets = assign_folds(k=10, fold_seed=0)
    assert np.array_equal(np.sort(index), np.arange(N_IMAGES))
    assert np.all(np.diff(offsets) == N_IMAGES // 10)


def test_assign_folds_deterministic_per_seed():
    a_index, a_offsets = assign_folds(k=10, fold_seed=1, subset=5000)
    b_index, b_offsets = assign_folds(k=10, fold_seed=1, subset=5000)
    c_index, _ = assign_folds(k=10, fold_seed=2, subset=5000)
    assert np.array_equal(a_index, b_index) and np.array_equal(a_offsets, b_offsets)
    assert not np.array_equal(np.sort(a_index), np.sort(c_index))  # another subset
    full_1, _ = assign_folds(k=10, fold_seed=1)
    full_2, _ = assign_folds(k=10, fold_seed=2)
    assert not np.array_equal(full_1[:N_IMAGES // 10], full_2[:N_IMAGES // 10])


# ---------------------------------------------------------------- source and path

def test_resolve_source_auto_follows_npz_presence(tmp_path, caplog):
    cfg = make_cfg(tmp_path, source="auto")
    with caplog.at_level(logging.INFO, logger="bcvae"):
        assert resolve_source(cfg) == "procedural"
    assert "procedural" in caplog.text
    Path(cfg.path).write_bytes(b"x")
    assert resolve_source(cfg) == "dsprites"
    assert resolve_source(make_cfg(tmp_path, source="procedural")) == "procedural"


def test_unknown_source_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.source.*'mnist'"):
        ensure_cache(make_cfg(tmp_path, source="mnist"))


@pytest.mark.parametrize("overrides, key", [({"k": 1}, r"data\.k"),
                                            ({"subset": -1}, r"data\.subset"),
                                            ({"subset": N_IMAGES + 1}, r"data\.subset"),
                                            ({"subset": 3, "k": 4}, r"data\.k")])
def test_bad_k_or_subset_names_the_key(tmp_path, overrides, key):
    with pytest.raises(ValueError, match=key):
        ensure_cache(make_cfg(tmp_path, **overrides))


def test_cache_path_one_file_per_source_seed_k_subset(tmp_path):
    base = make_cfg(tmp_path)
    variants = [make_cfg(tmp_path, fold_seed=1), make_cfg(tmp_path, k=10),
                make_cfg(tmp_path, subset=0), make_cfg(tmp_path, source="dsprites")]
    paths = {cache_path(base)} | {cache_path(cfg) for cfg in variants}
    assert len(paths) == 5
    assert cache_path(make_cfg(tmp_path, fold=3)) == cache_path(base)  # fold: same file
    assert cache_path(base).parent == Path(base.cache_dir)


# ---------------------------------------------------------------- contents

def test_cache_round_trip_matches_renderer(tmp_path):
    cfg = make_cfg(tmp_path, k=4, fold_seed=5, subset=400)
    data = read_cache(ensure_cache(cfg))
    index, offsets = data["index"], data["fold_offsets"]
    assert data["images"].shape == (400, 512) and data["images"].dtype == np.uint8
    # Factor classes follow from the index by the file's C order over FACTOR_SIZES.
    expected_classes = np.stack(np.unravel_index(index, FACTOR_SIZES), axis=1)
    assert np.array_equal(data["latents_classes"], expected_classes)
    assert np.array_equal(unpack_images(data["images"]), render_dsprites(expected_classes))
    assert np.array_equal(np.diff(offsets), [100, 100, 100, 100])
    expected_index, expected_offsets = assign_folds(4, 5, 400)
    assert np.array_equal(index, expected_index) and np.array_equal(offsets, expected_offsets)
    for f in range(4):  # fold-major: each fold one contiguous, sorted slice
        part = index[offsets[f]:offsets[f + 1]]
        assert np.all(np.diff(part) > 0)


def test_provenance_attributes(tmp_path):
    cfg = make_cfg(tmp_path, fold_seed=2)
    attrs = read_provenance(ensure_cache(cfg))
    assert attrs["cache_version"] == CACHE_VERSION
    assert attrs["source"] == "procedural" and attrs["renderer_version"] == RENDERER_VERSION
    assert (attrs["fold_seed"], attrs["k"], attrs["subset"], attrs["n_images"]) == (2, 5, 600, 600)
    assert time.strptime(attrs["created"][:19], "%Y-%m-%dT%H:%M:%S")


def test_valid_cache_is_not_rebuilt(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    path = ensure_cache(cfg)
    builds = count_builds(monkeypatch)
    assert ensure_cache(cfg) == path
    assert builds == []


# ---------------------------------------------------------------- stale and corrupt files

def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _drop_index(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["index"]


def _old_version(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["cache_version"] = CACHE_VERSION - 1


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an HDF5 file")


@pytest.mark.parametrize("damage", [_truncate, _drop_index, _old_version, _garbage])
def test_damaged_or_stale_cache_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    cfg = make_cfg(tmp_path)
    path = ensure_cache(cfg)
    good = read_cache(path)
    damage(path)
    builds = count_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        assert ensure_cache(cfg) == path
    assert len(builds) == 1
    assert str(path) in caplog.text and "rebuilding" in caplog.text
    rebuilt = read_cache(path)
    assert all(np.array_equal(good[name], rebuilt[name]) for name in good)


def test_new_renderer_version_rebuilds(tmp_path, monkeypatch, caplog):
    cfg = make_cfg(tmp_path)
    path = ensure_cache(cfg)
    monkeypatch.setattr(folds, "RENDERER_VERSION", RENDERER_VERSION + "-next")
    builds = count_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        ensure_cache(cfg)
    assert len(builds) == 1 and "renderer_version" in caplog.text
    assert read_provenance(path)["renderer_version"] == RENDERER_VERSION + "-next"


def test_leftover_temporary_of_a_dead_build_is_removed(tmp_path):
    cfg = make_cfg(tmp_path)
    path = cache_path(cfg)
    path.parent.mkdir(parents=True)
    leftover = path.with_name(path.name + ".tmp-999999")
    leftover.write_bytes(b"half a file")
    ensure_cache(cfg)
    assert not leftover.exists() and path.exists()


# ---------------------------------------------------------------- disk full

def test_disk_full_leaves_no_partial_file_and_names_directory(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    cache_dir = Path(cfg.cache_dir)
    monkeypatch.setattr(folds, "WRITE_BLOCK_ROWS", 100)  # several image writes
    real_setitem = h5py.Dataset.__setitem__
    seen_partial = []

    def setitem(self, key, value):
        if any(".tmp-" in p.name for p in cache_dir.iterdir()) and seen_partial:
            raise OSError(errno.ENOSPC, "No space left on device")
        seen_partial.append(True)
        real_setitem(self, key, value)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with pytest.raises(OSError, match="no space left") as info:
        ensure_cache(cfg)
    assert info.value.errno == errno.ENOSPC and str(cache_dir) in str(info.value)
    assert seen_partial  # the failure came after a partial write
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    assert ensure_cache(cfg).exists()  # space back: builds normally


# ---------------------------------------------------------------- concurrency

_WORKER = """
import json, logging, os, sys, time, types
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from bcvae.data.folds import ensure_cache, read_provenance
from bcvae.data.loader import load_all
cfg = types.SimpleNamespace(**json.loads(sys.argv[1]))
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
path = ensure_cache(cfg)
data = load_all(cfg)
print(json.dumps({"inode": os.stat(path).st_ino, "created": read_provenance(path)["created"],
                  "index": data.index.tolist(), "bytes": int(data.packed.sum())}), flush=True)
"""


def test_concurrent_processes_build_once_and_read_the_same_file(tmp_path):
    cfg = make_cfg(tmp_path, subset=3000)
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(vars(cfg)), str(go)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:  # both imported everything: start them together
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    logs = "".join(err for _, err in results)
    assert logs.count("building fold cache") == 1, logs
    outputs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert outputs[0] == outputs[1]
    assert len(outputs[0]["index"]) == 3000
    assert outputs[0]["inode"] == cache_path(cfg).stat().st_ino


# ---------------------------------------------------------------- real npz branch

class _LazyImages:
    """Stands in for the real file's 3 GB ``imgs`` array: renders rows on indexing."""

    shape = (N_IMAGES, 64, 64)
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, idx):
        return render_dsprites(all_latents_classes()[idx])


@pytest.fixture
def fake_npz(tmp_path, monkeypatch):
    """A small file at data.path and ``load_dsprites_npz`` answering with rendered images."""
    npz = tmp_path / "dsprites.npz"
    npz.write_bytes(b"stand-in for the real npz, version 1")
    loads = []

    def load(path):
        loads.append(Path(path))
        return _LazyImages(), all_latents_classes(), None
    monkeypatch.setattr(folds, "load_dsprites_npz", load)
    return npz, loads


def test_npz_source_records_sha256_and_skips_hash_when_unchanged(tmp_path, fake_npz,
                                                                 monkeypatch):
    npz, loads = fake_npz
    cfg = make_cfg(tmp_path, source="auto", path=str(npz), subset=300)
    path = ensure_cache(cfg)
    assert "dsprites" in path.name and loads == [npz]
    attrs = read_provenance(path)
    assert attrs["source"] == "dsprites"
    assert attrs["npz_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    data = read_cache(path)
    assert np.array_equal(unpack_images(data["images"]),
                          render_dsprites(all_latents_classes()[data["index"]]))
    monkeypatch.setattr(folds, "file_sha256", lambda p: pytest.fail("hashed an unchanged file"))
    ensure_cache(cfg)
    assert loads == [npz]


def test_npz_touched_but_same_content_is_not_rebuilt(tmp_path, fake_npz):
    npz, loads = fake_npz
    cfg = make_cfg(tmp_path, source="dsprites", path=str(npz), subset=300)
    ensure_cache(cfg)
    os.utime(npz, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    ensure_cache(cfg)
    assert len(loads) == 1


def test_npz_with_new_content_rebuilds(tmp_path, fake_npz, caplog):
    npz, loads = fake_npz
    cfg = make_cfg(tmp_path, source="dsprites", path=str(npz), subset=300)
    path = ensure_cache(cfg)
    npz.write_bytes(b"a different download")
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        ensure_cache(cfg)
    assert len(loads) == 2 and "sha256" in caplog.text
    new_sha = hashlib.sha256(b"a different download").hexdigest()
    assert read_provenance(path)["npz_sha256"] == new_sha


def test_npz_removed_after_build_uses_cache_with_warning(tmp_path, fake_npz, caplog):
    npz, loads = fake_npz
    cfg = make_cfg(tmp_path, source="dsprites", path=str(npz), subset=300)
    path = ensure_cache(cfg)
    npz.unlink()
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        assert ensure_cache(cfg) == path
    assert len(loads) == 1 and "cannot verify" in caplog.text
