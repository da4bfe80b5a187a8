"""dapo.weights: an update is returned whole and verified, or refused with the tensor and the fault named."""

from __future__ import annotations

import numpy as np
import pytest

from dapo.v1 import weights_pb2
from dapo.weights import TensorBytes, WeightAssembler, WeightUpdateError, encode_update


def tensor(name: str, shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> TensorBytes:
    np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
    values = np.random.default_rng(seed).standard_normal(shape).astype(np_dtype)
    return TensorBytes(name, dtype, shape, memoryview(values.tobytes()))


TENSORS = [
    tensor("a.weight", (4, 8), seed=1),
    tensor("b.bias", (8,), seed=2),
    tensor("c.weight", (3, 5), seed=3),
]
EXPECTED = {t.name: (t.dtype, t.shape) for t in TENSORS}


def assemble(messages, expected=EXPECTED) -> dict[str, TensorBytes]:
    assembler = WeightAssembler(expected)
    for message in messages:
        assembler.add(message)
    return assembler.finish()


def test_round_trip_in_small_chunks() -> None:
    got = assemble(encode_update(7, TENSORS, chunk_bytes=10))
    assert list(got) == [t.name for t in TENSORS]
    for t in TENSORS:
        assert got[t.name].shape == t.shape and bytes(got[t.name].data) == bytes(t.data)


def test_chunks_may_arrive_in_any_order() -> None:
    manifest, *chunks = encode_update(1, TENSORS, chunk_bytes=16)
    got = assemble([manifest, *reversed(chunks)])
    assert bytes(got["a.weight"].data) == bytes(TENSORS[0].data)


def refused(messages, expected=EXPECTED) -> str:
    with pytest.raises(WeightUpdateError) as info:
        assemble(messages, expected)
    return str(info.value)


def test_a_corrupted_chunk_fails_the_checksum() -> None:
    messages = list(encode_update(1, TENSORS, chunk_bytes=16))
    chunk = next(m for m in messages if m.WhichOneof("kind") == "chunk" and m.chunk.name == "b.bias")
    chunk.chunk.data = bytes([chunk.chunk.data[0] ^ 1]) + chunk.chunk.data[1:]
    message = refused(messages)
    assert "'b.bias'" in message and "checksum" in message


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_a_corrupted_last_chunk_fails_the_checksum_whatever_the_order(order: str) -> None:
    # in order the checksum is carried chunk by chunk; out of order it is computed over the whole tensor
    manifest, *chunks = encode_update(1, TENSORS, chunk_bytes=16)
    last = [m for m in chunks if m.chunk.name == "a.weight"][-1]
    last.chunk.data = last.chunk.data[:-1] + bytes([last.chunk.data[-1] ^ 0x80])
    message = refused([manifest, *(chunks if order == "in order" else reversed(chunks))])
    assert "'a.weight'" in message and "checksum" in message


def test_a_repeated_chunk_is_refused_even_when_its_bytes_match() -> None:
    manifest, *chunks = encode_update(1, TENSORS, chunk_bytes=16)
    message = refused([manifest, chunks[0], *chunks])
    assert "'a.weight'" in message and "received" in message


def test_wrong_shape_wrong_dtype_unknown_and_missing_names_are_refused_at_the_manifest() -> None:
    bad_shape = [TensorBytes("a.weight", "float32", (8, 4), TENSORS[0].data), *TENSORS[1:]]
    assert "'a.weight': shape [8, 4], the model expects [4, 8]" in refused(encode_update(1, bad_shape))
    bad_dtype = [tensor("a.weight", (4, 8), "float16"), *TENSORS[1:]]
    assert "'a.weight': dtype float16, the model expects float32" in refused(encode_update(1, bad_dtype))
    unknown = [*TENSORS, tensor("d.weight", (2,))]
    assert "'d.weight': unknown to the model" in refused(encode_update(1, unknown))
    missing = TENSORS[:2]
    assert "'c.weight': missing from the manifest" in refused(encode_update(1, missing))
    two_missing = TENSORS[:1]
    assert "'b.bias' and 1 more: missing" in refused(encode_update(1, two_missing))


def test_a_stream_that_stops_early_is_refused() -> None:
    messages = list(encode_update(1, TENSORS, chunk_bytes=16))
    message = refused(messages[:-1])
    assert "'c.weight'" in message and "received 48 of 60 bytes" in message
    assert "before its manifest" in refused([])


def test_malformed_streams_are_refused() -> None:
    manifest, *chunks = encode_update(2, TENSORS, chunk_bytes=16)
    assert "before the manifest" in refused(chunks)
    assert "a second manifest" in refused([manifest, manifest])
    assert "neither a manifest nor a chunk" in refused([manifest, weights_pb2.WeightUpdateMessage()])
    stray = weights_pb2.WeightUpdateMessage(
        chunk=weights_pb2.TensorChunk(version=3, name="a.weight", data=b"x")
    )
    assert "chunk of version 3 inside the update to 2" in refused([manifest, stray])
    outside = weights_pb2.WeightUpdateMessage(
        chunk=weights_pb2.TensorChunk(version=2, name="b.bias", offset=30, data=b"xxxx")
    )
    assert "'b.bias': chunk [30, 34) outside its 32 bytes" in refused([manifest, outside])
    repeated = [manifest, *chunks, chunks[0]]
    assert "repeated a chunk" in refused(repeated) or "outside" in refused(repeated)


def test_manifest_sizes_must_fit_shapes() -> None:
    spec = weights_pb2.TensorSpec(name="a.weight", dtype="float32", shape=[4, 8], num_bytes=100)
    manifest = weights_pb2.WeightUpdateMessage(manifest=weights_pb2.WeightManifest(version=1, tensors=[spec]))
    assert "100 bytes do not fit shape [4, 8] of float32" in refused([manifest], expected=None)
    spec = weights_pb2.TensorSpec(name="a.weight", dtype="int4", shape=[4, 8], num_bytes=16)
    manifest = weights_pb2.WeightUpdateMessage(manifest=weights_pb2.WeightManifest(version=1, tensors=[spec]))
    assert "unsupported dtype 'int4'" in refused([manifest], expected=None)
    negative = weights_pb2.WeightUpdateMessage(manifest=weights_pb2.WeightManifest(version=-1))
    assert "version must be >= 0" in refused([negative], expected=None)
