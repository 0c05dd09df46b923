"""Read back what an offline W&B run recorded, from its ``.wandb`` file.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version),
then 32 KiB blocks of records, each with a 7-byte header (CRC32, length,
type: full / first / middle / last), payloads being serialised
``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """Every complete record of ``path``; a record still being written at its end is left out."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record file"
    records, pos, chunks = [], 7, []
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:
            pos += left
            continue
        _crc, length, kind = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if kind == 0 and length == 0:
            pos += left - HEADER.size  # zero padding to the end of the block
            continue
        if pos + length > len(data):
            break  # read while the writer is mid-record: the rest of the file is not there yet
        chunks.append(data[pos:pos + length])
        pos += length
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(chunks))
            records.append(rec)
            chunks = []
    return records


def run_file(run_dir: Path) -> Path:
    """The ``.wandb`` file of the (latest) offline run under ``run_dir/wandb``."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}/wandb"
    return files[-1]


def history(run_dir: Path) -> list[dict]:
    """Every ``run.log`` call as a dict ``{key: decoded value}`` (``_step`` included)."""
    rows = []
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        for rec in read_records(path):
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
    return rows


def run_ids(run_dir: Path) -> set[str]:
    ids = set()
    for path in Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"):
        for rec in read_records(path):
            if rec.WhichOneof("record_type") == "run":
                ids.add(rec.run.run_id)
    return ids
