"""The safetensors header: an 8-byte little-endian length, then that many bytes of JSON.

The JSON maps each tensor's name to its dtype code, shape and data offsets (relative to the end of the
header), plus an optional `__metadata__` of strings. Read from a file (a model directory, a staged
weight update) or from bytes (a TrainBatch payload), and written by the rollout's staging file, whose
header must exist before any tensor's bytes arrive.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

LENGTH_BYTES = 8


def parse_header(buffer: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """The header of a safetensors buffer and the offset its data section starts at.

    ValueError when the buffer is shorter than its header claims or the header is not a JSON object.
    """
    if len(buffer) < LENGTH_BYTES:
        raise ValueError(f"{len(buffer)} bytes: too short for a safetensors header")
    (length,) = struct.unpack("<Q", buffer[:LENGTH_BYTES])
    end = LENGTH_BYTES + length
    if end > len(buffer):
        raise ValueError(
            f"safetensors header claims {length} bytes, only {len(buffer) - LENGTH_BYTES} follow"
        )
    return _decode(bytes(buffer[LENGTH_BYTES:end])), end


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """`parse_header` of a file, reading only its header."""
    with open(path, "rb") as f:
        prefix = f.read(LENGTH_BYTES)
        if len(prefix) < LENGTH_BYTES:
            raise ValueError(f"{path}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        raw = f.read(length)
    if len(raw) < length:
        raise ValueError(
            f"{path}: safetensors header claims {length} bytes, the file has {len(raw)} after it"
        )
    try:
        return _decode(raw), LENGTH_BYTES + length
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def encode_header(header: dict[str, Any]) -> bytes:
    """Length prefix and JSON of `header`, padded with spaces so the data section starts 8-byte aligned."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"safetensors header is a JSON {type(header).__name__}, expected an object")
    return header
