"""The read-back helper itself: a record file written by hand, whole and cut mid-record."""

from __future__ import annotations

import zlib

from wandb.proto import wandb_internal_pb2

import wandb_records


def _history_record(step: int) -> bytes:
    rec = wandb_internal_pb2.Record()
    item = rec.history.item.add()
    item.key, item.value_json = "_step", str(step)
    return rec.SerializeToString()


def _record_file(payloads: list[bytes]) -> bytes:
    out = b":W&B" + b"\x00\x00\x00"  # magic, then 3 bytes the reader skips
    for payload in payloads:
        out += wandb_records.HEADER.pack(zlib.crc32(payload), len(payload), wandb_records.FULL) + payload
    return out


def test_every_whole_record_is_read_and_a_tail_still_being_written_is_left_out(tmp_path):
    whole = _record_file([_history_record(1), _history_record(2)])
    path = tmp_path / "run-x.wandb"
    path.write_bytes(whole)
    assert [r.history.item[0].value_json for r in wandb_records.read_records(path)] == ["1", "2"]
    path.write_bytes(whole[:-3])  # the writer has not finished the second record
    assert [r.history.item[0].value_json for r in wandb_records.read_records(path)] == ["1"]
