"""Experiment tracking: the only module that talks to Weights & Biases.

Every scalar goes to two places through one :meth:`Tracker.log` call: an
append-only JSON-lines file next to the checkpoint (always) and W&B (when it
initialised). W&B runs offline unless credentials are configured, so nothing
touches the network by default; ``wandb sync runs/<exp>/fold<k>/wandb/offline-run-*``
uploads an offline run later. A W&B failure never stops training: the run
continues with the local log and a warning.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import secrets
import string
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bcvae.errors import RunFileError

log = logging.getLogger("bcvae")

INIT_TIMEOUT_S = 15
"""Seconds ``wandb.init`` may wait for the server before the run logs offline instead."""


def wandb_credentials_configured() -> bool:
    """True when an API key is in the environment or in ~/.netrc for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """Config ``log.wandb_mode`` -> the W&B mode actually used.

    ``WANDB_MODE`` in the environment wins over the config, as W&B users expect.
    """
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode == "auto":
        return "online" if wandb_credentials_configured() else "offline"
    return mode


def new_run_id() -> str:
    """A fresh W&B-style run id (8 lowercase letters and digits).

    Drawn from ``os.urandom``, so the seeded RNGs of the run are left untouched.
    """
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class Tracker:
    """Logs scalars, images and GIFs for one run (rank 0 only).

    Parameters
    ----------
    run_dir:
        ``runs/<exp>/fold<k>``; ``metrics.jsonl`` and ``wandb/`` live here.
    config:
        Resolved config as a nested dict (stored in W&B's run config).
    run_id:
        W&B run id to resume (from the checkpoint), or None for a new run.
    """

    def __init__(self, run_dir: Path, config: dict, *, name: str, group: str | None,
                 mode: str = "auto", project: str = "bcvae", entity: str = "",
                 run_id: str | None = None, provenance: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.media_dir = self.run_dir / "media"
        self.run = None
        self.run_id = run_id
        self._wandb = None
        mode = resolve_mode(mode)
        if mode != "disabled":
            self._init_wandb(config, name, group, mode, project, entity, provenance or {})

    def _init_wandb(self, config, name, group, mode, project, entity, provenance) -> None:
        # The environment must be set before wandb.init: passing mode= alone
        # still lets the client reach for the network.
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            def start(mode: str):
                return wandb.init(
                    project=project, entity=entity or None, name=name, group=group,
                    id=self.run_id, resume="allow", dir=str(self.run_dir), mode=mode,
                    config={**config, "provenance": provenance},
                    # Each Tracker is its own run: W&B's default would hand back any run
                    # still open in this process and log this run's data into it.
                    reinit="create_new",
                    # Unreachable servers: give up after INIT_TIMEOUT_S instead of W&B's 90 s.
                    settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False,
                                            init_timeout=INIT_TIMEOUT_S),
                )

            try:
                self.run = start(mode)
            except Exception as err:
                if mode != "online":
                    raise
                log.warning("W&B did not start online within %d s (%s: %s); logging offline instead "
                            "(upload later with `wandb sync %s/wandb/offline-run-*`)", INIT_TIMEOUT_S,
                            type(err).__name__, " ".join(str(err).split())[:200], self.run_dir)
                os.environ["WANDB_MODE"] = "offline"
                wandb.teardown()  # the failed online attempt's service would swallow the offline run
                self.run = start("offline")
            self._wandb = wandb
            self.run_id = self.run.id
        except Exception as err:  # any tracker failure must not lose the run
            log.warning("W&B could not start (%s: %s); continuing with the local log %s only",
                        type(err).__name__, " ".join(str(err).split()), self.jsonl_path)  # one line
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append ``metrics`` at global ``step`` to the JSONL log and to W&B."""
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        try:
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps({"step": int(step), **scalars}) + "\n")
        except OSError as err:  # a bare "[Errno 28] No space left on device" would not say where
            raise OSError(err.errno, f"{err.strerror} while appending to {self.jsonl_path}") from err
        if self.run is not None:
            self._safe(lambda: self.run.log(scalars, step=int(step)))

    def sync(self) -> None:
        """fsync the JSON-lines log: rows a checkpoint counts as logged survive a crash."""
        if self.jsonl_path.exists():
            fd = os.open(self.jsonl_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """Log a ``(H, W)`` or ``(H, W, 3)`` uint8 image (W&B logs float images as black)."""
        if image.dtype != np.uint8:
            raise TypeError(f"log_image({key!r}) needs uint8, got {image.dtype}")
        if self.run is not None:
            self._safe(lambda: self.run.log({key: self._wandb.Image(image, caption=caption)}, step=int(step)))

    def log_gif(self, key: str, path: Path, step: int) -> None:
        """Log an animated GIF already written at ``path``."""
        if self.run is not None:
            self._safe(lambda: self.run.log({key: self._wandb.Video(str(path), format="gif")}, step=int(step)))

    def summary(self, values: dict[str, Any]) -> None:
        """Set run-summary values (final scores) in W&B."""
        if self.run is not None:
            self._safe(lambda: self.run.summary.update({k: _to_float(v) for k, v in values.items()}))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._safe(lambda: self.run.finish(exit_code=exit_code))
            self.run = None

    def _safe(self, fn) -> None:
        try:
            fn()
        except Exception as err:
            log.warning("W&B logging failed (%s: %s); the local log keeps every scalar", type(err).__name__, err)


def tracker_for(run_dir: Path, config: dict, log_cfg: Any, *, name: str, group: str | None,
                run_id: str | None = None, provenance: dict | None = None) -> Tracker:
    """A :class:`Tracker` with the W&B settings of a config's ``log`` section
    (:class:`bcvae.config.LogConfig`): the one place ``log.wandb_*`` are read."""
    return Tracker(run_dir, config, name=name, group=group, mode=log_cfg.wandb_mode,
                   project=log_cfg.wandb_project, entity=log_cfg.wandb_entity, run_id=run_id,
                   provenance=provenance)


def _to_float(value: Any) -> float | int | str | None:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    if hasattr(value, "item"):
        value = value.item()
    value = float(value)
    return value if math.isfinite(value) else str(value)


def read_jsonl(path: Path) -> list[dict]:
    """Read a metrics.jsonl file (skipping a torn last line left by a kill)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ---------------------------------------------------------------- reading a run's history back

def merge_by_step(rows: Sequence[dict]) -> list[dict]:
    """One row per step, sorted by step; a later value of a key at the same step wins.

    The trainer logs training, validation and evaluation scalars in separate
    calls that can share a step; a resumed W&B run may repeat steps.
    """
    merged: dict[int, dict] = {}
    for row in rows:
        step = int(row["step"])
        merged.setdefault(step, {"step": step}).update(row)
    return [merged[s] for s in sorted(merged)]


def _wandb_payloads(path: Path) -> list[bytes]:
    """Serialised records of a ``.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    block, header = 32768, struct.Struct("<IHB")  # per chunk: CRC32, length, type
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise RunFileError(f"{path} is not a W&B run file (it does not start with ':W&B')")
    payloads, chunks, pos = [], [], 7  # file header: ':W&B', 2-byte magic, 1-byte version
    while pos + header.size <= len(data):
        left = block - pos % block
        if left < header.size:  # too little room for a chunk header: the block is padded
            pos += left
            continue
        _crc, length, kind = header.unpack_from(data, pos)
        pos += header.size
        if kind == 0 and length == 0:
            pos += left - header.size
            continue
        if pos + length > len(data):  # a record torn by a kill: keep the complete ones before it
            log.warning("%s ends in a torn record; reading the %d complete records before it", path, len(payloads))
            break
        chunks.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):  # FULL or LAST chunk completes a record
            payloads.append(b"".join(chunks))
            chunks = []
    return payloads


def wandb_run_files(path: Path) -> list[Path]:
    """``.wandb`` files of a run directory, an offline W&B run directory or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("wandb/offline-run-*/run-*.wandb")) or sorted(path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run file (run-*.wandb) under {path}")
    return files


def history_from_wandb(path: Path) -> list[dict]:
    """Scalar history of an offline W&B run, as rows ``{"step": int, key: float}``.

    ``path`` is a run directory (``runs/<exp>/fold<k>``), an ``offline-run-*``
    directory or a ``run-*.wandb`` file. Images and other media are left out.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    rows = []
    for file in wandb_run_files(path):
        for payload in _wandb_payloads(file):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(payload)
            except DecodeError:
                raise RunFileError(f"{file} holds a record that is not a W&B record: a damaged run file") from None
            if record.WhichOneof("record_type") != "history":
                continue
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            row = {k: v for k, v in items.items() if not k.startswith("_") and is_number(v)}
            if "_step" in items and row:
                rows.append({"step": int(items["_step"]), **row})
    return merge_by_step(rows)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_history(path: Path, source: str = "auto") -> list[dict]:
    """Logged scalars of a run, merged by step.

    ``source``: ``"jsonl"`` (``metrics.jsonl``), ``"wandb"`` (the offline W&B run)
    or ``"auto"`` (the JSONL log when present, else W&B). ``path`` is a run
    directory or the log file itself.
    """
    path = Path(path)
    if source not in ("auto", "jsonl", "wandb"):
        raise ValueError(f"history source must be 'auto', 'jsonl' or 'wandb', got {source!r}")
    jsonl = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
    if source == "jsonl" or (source == "auto" and jsonl.exists()):
        if not jsonl.exists():
            raise FileNotFoundError(f"no metrics log {jsonl}")
        return merge_by_step(read_jsonl(jsonl))
    return history_from_wandb(path)
