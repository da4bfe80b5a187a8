from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "num_bytes", "crc32")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_bytes: int
    crc32: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_bytes: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class WeightManifest(_message.Message):
    __slots__ = ("version", "tensors", "total_bytes", "run_id", "relay", "num_chunks")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    run_id: str
    relay: RelayPlan
    num_chunks: int
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., run_id: _Optional[str] = ..., relay: _Optional[_Union[RelayPlan, _Mapping]] = ..., num_chunks: _Optional[int] = ...) -> None: ...

class RelayPlan(_message.Message):
    __slots__ = ("address", "downstream", "fanout", "stall_s")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DOWNSTREAM_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    STALL_S_FIELD_NUMBER: _ClassVar[int]
    address: str
    downstream: _containers.RepeatedScalarFieldContainer[str]
    fanout: int
    stall_s: float
    def __init__(self, address: _Optional[str] = ..., downstream: _Optional[_Iterable[str]] = ..., fanout: _Optional[int] = ..., stall_s: _Optional[float] = ...) -> None: ...

class RelayOutcome(_message.Message):
    __slots__ = ("address", "is_served", "source", "error")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_SERVED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    address: str
    is_served: bool
    source: str
    error: str
    def __init__(self, address: _Optional[str] = ..., is_served: _Optional[bool] = ..., source: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("version", "name", "offset", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: int
    name: str
    offset: int
    data: bytes
    def __init__(self, version: _Optional[int] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WeightUpdateMessage(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: WeightManifest
    chunk: TensorChunk
    def __init__(self, manifest: _Optional[_Union[WeightManifest, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class WeightUpdateReply(_message.Message):
    __slots__ = ("version", "num_bytes", "duration_s", "run_id", "relayed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_bytes: int
    duration_s: float
    run_id: str
    relayed: _containers.RepeatedCompositeFieldContainer[RelayOutcome]
    def __init__(self, version: _Optional[int] = ..., num_bytes: _Optional[int] = ..., duration_s: _Optional[float] = ..., run_id: _Optional[str] = ..., relayed: _Optional[_Iterable[_Union[RelayOutcome, _Mapping]]] = ...) -> None: ...

class FetchWeightsRequest(_message.Message):
    __slots__ = ("min_version", "resume", "requester")
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    resume: ResumePoint
    requester: str
    def __init__(self, min_version: _Optional[int] = ..., resume: _Optional[_Union[ResumePoint, _Mapping]] = ..., requester: _Optional[str] = ...) -> None: ...

class ResumePoint(_message.Message):
    __slots__ = ("run_id", "version", "from_chunk")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_CHUNK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: int
    from_chunk: int
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[int] = ..., from_chunk: _Optional[int] = ...) -> None: ...

class RelayReport(_message.Message):
    __slots__ = ("run_id", "version", "outcomes")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: int
    outcomes: _containers.RepeatedCompositeFieldContainer[RelayOutcome]
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[RelayOutcome, _Mapping]]] = ...) -> None: ...

class RelayReportReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatestVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatestVersionReply(_message.Message):
    __slots__ = ("version", "run_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    run_id: str
    def __init__(self, version: _Optional[int] = ..., run_id: _Optional[str] = ...) -> None: ...
