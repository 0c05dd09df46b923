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
* Pretrained directories: weights, config, evaluation and sha256 of a finished run.
* The low-level facts every command shares: the run-directory layout
  (:func:`run_dir_for`) and its lock, the device choice and rebuilding a model from a
  checkpoint (:func:`load_model`), so figures and evaluation never reach into the trainer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import filelock
import numpy as np
import torch
import yaml

from bcvae import config
from bcvae.errors import CheckpointError, TrainingError
from bcvae.model import VAE

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
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
    if reason:  # torch's own text goes on to advise weights_only=False: the unsafe thing to do
        return f"not a torch file of tensors: {reason.group(1).strip()}"
    lines = [line for line in str(err).strip().splitlines() if "weights_only" not in line]
    return f"{type(err).__name__}: {lines[0] if lines else 'unreadable'}"


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
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default))


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, empty, torn or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``:
    a reader (or a kill) never sees half a file. The one atomic-write helper for text."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror} while writing {path}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# ---------------------------------------------------------------- pretrained models

PRETRAINED_MODEL = "model.pt"
PRETRAINED_SUMS = "sha256"
PRETRAINED_MAX_BYTES = 2 * 2**20
"""Every file of a pretrained directory stays under 2 MiB (it lives in git)."""
_HISTORY_MAX_BYTES = 1 * 2**20


def is_pretrained(path: Path) -> bool:
    """A ``pretrained/<experiment>/`` directory (weights + config + sha256), not a run directory."""
    path = Path(path)
    return path.is_dir() and (path / PRETRAINED_MODEL).is_file() and (path / PRETRAINED_SUMS).is_file()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _thin_history(rows: list[dict], max_bytes: int) -> list[dict]:
    """Every validation and evaluation row, and evenly spaced training rows (the last one
    always), so that the JSON lines stay within about ``max_bytes``."""
    def size(row: dict) -> int:
        return len(json.dumps(row)) + 1

    train = [r for r in rows if any(k.startswith("train/") for k in r)]
    keep = [r for r in rows if not any(k.startswith("train/") for k in r)]
    budget = max(max_bytes - sum(size(r) for r in keep), 1)
    every = max(1, -(-sum(size(r) for r in train) // budget))   # ceiling division
    kept = train[::every]
    if train and kept[-1] is not train[-1]:
        kept.append(train[-1])
    chosen = {id(r) for r in keep + kept}
    return [r for r in rows if id(r) in chosen]   # in the log's own order


def export_pretrained(ckpt: dict, out_dir: Path, *, config_yaml: str, eval_result: dict,
                      history: list[dict], source: str) -> list[Path]:
    """Write ``out_dir`` = ``model.pt`` (the VAE's float32 state dict, nothing else),
    ``config.yaml`` (resolved config), ``eval.json``, ``metrics.jsonl`` (the training log,
    thinned to under 1 MiB), ``info.json`` (step, epoch, data provenance, source run) and
    ``sha256`` (``sha256sum -c`` format). Refuses a file over 2 MiB."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() if v.is_floating_point() else v.cpu()
             for k, v in ckpt["model"].items()}
    torch.save(state, out_dir / PRETRAINED_MODEL)
    (out_dir / "config.yaml").write_text(config_yaml)
    write_json(out_dir / "eval.json", eval_result)
    rows = _thin_history(history, _HISTORY_MAX_BYTES)
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(out_dir / "info.json", {"step": ckpt["step"], "epoch": ckpt["epoch"], "source_run": source,
                                       "provenance": ckpt.get("provenance"), "history_rows": len(rows),
                                       "warm_start_end": ckpt.get("warm_start_end"),
                                       "history_rows_logged": len(history)})
    files = [PRETRAINED_MODEL, "config.yaml", "eval.json", "metrics.jsonl", "info.json"]
    for name in files:
        size = (out_dir / name).stat().st_size
        if size >= PRETRAINED_MAX_BYTES:
            raise CheckpointError(f"{out_dir / name} is {size / 2**20:.2f} MiB; pretrained files must stay under 2 MiB")
    (out_dir / PRETRAINED_SUMS).write_text("".join(f"{_sha256(out_dir / n)}  {n}\n" for n in files))
    return [out_dir / n for n in files + [PRETRAINED_SUMS]]


def load_pretrained(path: Path) -> dict:
    """Read a pretrained directory as a checkpoint-like dict (``model``, ``config``, ``step``,
    ``epoch``, ``provenance``; no optimiser, no discriminator, no RNG).

    Every file listed in ``sha256`` must match its recorded hash, and the weights are
    read with ``torch.load(weights_only=True)``; anything else raises
    :class:`~bcvae.errors.CheckpointError` naming the file.
    """
    path = Path(path)
    sums = {}
    for line in (path / PRETRAINED_SUMS).read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if not digest or not name:
            raise CheckpointError(f"{path / PRETRAINED_SUMS}: malformed line {line!r} (want '<sha256>  <file>')")
        sums[name] = digest
    for name in (PRETRAINED_MODEL, "config.yaml", "info.json"):
        if name not in sums:
            raise CheckpointError(f"{path / PRETRAINED_SUMS} records no sha256 for {name}")
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing")
        actual = _sha256(path / name)
        if actual != sums[name]:
            raise CheckpointError(f"{path / name} does not match its recorded sha256 "
                                  f"({actual[:12]}… != {sums[name][:12]}…): altered or corrupt")
    try:
        state = torch.load(path / PRETRAINED_MODEL, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path / PRETRAINED_MODEL} is not a readable state dict ({_load_failure(err)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path / PRETRAINED_MODEL} is not a state dict of tensors")
    info = json.loads((path / "info.json").read_text())
    return {"model": state, "config": yaml.safe_load((path / "config.yaml").read_text()),
            "step": info["step"], "epoch": info["epoch"], "provenance": info.get("provenance"),
            "warm_start_end": info.get("warm_start_end"),
            "disc": None, "wandb_run_id": None, "pretrained": True}


# ---------------------------------------------------------------- runs on disk, devices, models

def run_dir_for(cfg: config.Config) -> Path:
    """``<run_dir>/<name>/fold<k>`` of a config (see :func:`run_path`)."""
    return run_path(cfg.run_dir, cfg.name, cfg.data.fold)


def run_path(run_dir: str | Path, name: str, fold: int) -> Path:
    """``<run_dir>/<name>/fold<k>``: the one place the run-directory layout is defined."""
    return Path(run_dir) / name / f"fold{fold}"


def lock_run_dir(run_dir: Path) -> filelock.FileLock:
    """Take ``<run dir>.lock`` (held until released, or until the process dies: the OS drops it).

    A second training of the same run would interleave checkpoints and logs (or
    ``--fresh`` would move the directory away under the first): it is refused at once.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(run_dir.with_name(run_dir.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise TrainingError(f"{run_dir} is in use by another training (lock {lock.lock_file}); "
                            "wait for it to finish or stop it first") from None
    return lock


def pick_device(spec: str) -> torch.device:
    """``train.device`` -> a torch device: ``auto`` is CUDA when present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={spec!r} but CUDA is not available on this machine")
    return torch.device(spec)


def checkpoint_path(run: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file; a ``pretrained/<experiment>``
    directory stands for itself."""
    if is_pretrained(run):
        return run
    return run / "checkpoint.pt" if run.is_dir() else run


def load_model(ckpt_path: Path, device: torch.device | None = None) -> tuple[VAE, config.Config, dict]:
    """Rebuild the VAE of a checkpoint or a pretrained directory; returns (model in eval
    mode, its config, the checkpoint — for a pretrained directory, its checkpoint-like dict)."""
    ckpt = load_pretrained(ckpt_path) if is_pretrained(ckpt_path) else load_checkpoint(ckpt_path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{ckpt_path}: its 'config' entry is a {type(ckpt.get('config')).__name__}, "
                              "not a mapping: not a bcvae checkpoint")
    cfg = config.from_dict(ckpt["config"], source=f"{ckpt_path} (saved config)")
    device = device or pick_device(cfg.train.device if cfg.train.device != "auto" else "auto")
    model = VAE(cfg.model.z_dim, cfg.model.arch)
    model.load_state_dict(ckpt["model"])
    model.to(device, memory_format=torch.channels_last).eval()
    return model, cfg, ckpt
