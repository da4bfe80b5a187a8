from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreItem(_message.Message):
    __slots__ = ("id", "response", "ground_truth")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    response: str
    ground_truth: str
    def __init__(self, id: _Optional[str] = ..., response: _Optional[str] = ..., ground_truth: _Optional[str] = ...) -> None: ...

class MathVerifyOptions(_message.Message):
    __slots__ = ("float_rounding", "numeric_precision", "strict", "allow_set_relation_comp", "string_comparison")
    FLOAT_ROUNDING_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_PRECISION_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SET_RELATION_COMP_FIELD_NUMBER: _ClassVar[int]
    STRING_COMPARISON_FIELD_NUMBER: _ClassVar[int]
    float_rounding: int
    numeric_precision: int
    strict: bool
    allow_set_relation_comp: bool
    string_comparison: bool
    def __init__(self, float_rounding: _Optional[int] = ..., numeric_precision: _Optional[int] = ..., strict: _Optional[bool] = ..., allow_set_relation_comp: _Optional[bool] = ..., string_comparison: _Optional[bool] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("verifier", "items", "binary", "math_verify")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    MATH_VERIFY_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    binary: bool
    math_verify: MathVerifyOptions
    def __init__(self, verifier: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., binary: _Optional[bool] = ..., math_verify: _Optional[_Union[MathVerifyOptions, _Mapping]] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("id", "score", "correct", "extracted", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    correct: bool
    extracted: str
    error: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., correct: _Optional[bool] = ..., extracted: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...
