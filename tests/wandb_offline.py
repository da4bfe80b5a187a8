"""Read what an offline W&B run recorded (its `run-<id>.wandb` file) for tests: history rows and config.

The file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
records, each a 7-byte header (CRC-32, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of
a serialized `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def _records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows in order, config) of the offline run in `run_dir` (wandb/offline-run-*/)."""
    (path,) = run_dir.glob("run-*.wandb")
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind in ("config", "run"):
            update = record.config.update if kind == "config" else record.run.config.update
            config.update({i.key: json.loads(i.value_json) for i in update})
    return rows, config
