"""Checkpoints and atomic JSON: what a run writes to disk so it can resume exactly.

* Atomic writes: a checkpoint goes to a temp file in the same directory, is
  fsynced, then renamed over the old one; a kill or a full disk mid-write
  leaves the previous checkpoint intact. JSON results go through a temp file
  and a rename too, so a reader never sees half a file.
* Safe loading: ``torch.load(weights_only=True)``, so a checkpoint never
  unpickles arbitrary objects; unreadable, foreign or newer-format files raise
  :class:`~bcvae.errors.CheckpointError` with one line naming the file.
* RNG state: Python, NumPy, torch (and CUDA) generators are saved and restored,
  so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from bcvae.errors import CheckpointError

CHECKPOINT_VERSION = 1
# What resuming reads from every checkpoint (FactorVAE runs also need "disc" and "disc_opt").
CHECKPOINT_KEYS = ("config", "model", "opt", "step", "epoch", "step_in_epoch", "rng")


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically: a temp file in the same directory, fsync, rename.

    A kill or a full disk during the write leaves the previous checkpoint intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {path}: {err.strerror or err} ({kept})") from err


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary pickles)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a bcvae checkpoint ({_load_failure(err)})"
        ) from None
    version = ckpt.get("version") if isinstance(ckpt, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"{path} is not a bcvae checkpoint (no format version)")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this code's {CHECKPOINT_VERSION}; update bcvae"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete bcvae checkpoint (missing {', '.join(missing)})")
    return ckpt


def _load_failure(err: Exception) -> str:
    """One line on why ``torch.load`` failed. Its weights-only refusal spans paragraphs and
    suggests ``weights_only=False``, which would run whatever code the file names."""
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if unsafe:
        return f"it holds a pickled {unsafe.group(1)} object, which is never unpickled"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    np_state = np.random.get_state()
    state["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    state["numpy_pos"] = int(np_state[2])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (numpy scalars converted)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
