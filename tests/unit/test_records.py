"""The shared names and records (dapo.records, dapo.dtypes, dapo.safetensors_header, the GSM8K parser)
are the ones the config schema, the controller's OpenAPI schema, the reward service and the weights
contract accept."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dapo import keys
from dapo.config import RunConfig
from dapo.config.nemo import translate
from dapo.config.schema import MathEnvConfig, PolicyConfig, VllmConfig
from dapo.data import NoFinalAnswer, gsm8k_final_answer, without_thousands_separators
from dapo.dtypes import (
    DTYPES,
    SERVED_DTYPES,
    TRAIN_PRECISIONS,
    from_safetensors,
    item_size,
    name_of,
    safetensors_code,
    torch_dtype,
)
from dapo.records import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    VERIFIERS,
    event_entry,
    is_terminal,
    run_event,
)
from dapo.safetensors_header import encode_header, parse_header, read_header
from dapo.weights import TensorBytes, WeightAssembler, WeightUpdateError, encode_update


def _enum(schema: dict[str, Any], *path: str) -> list[Any]:
    node: Any = schema
    for step in path:
        node = node[step]
    if "anyOf" in node:  # an optional field: the enum is one branch
        node = next(branch for branch in node["anyOf"] if "enum" in branch)
    return list(node["enum"])


# --- run statuses -------------------------------------------------------------------------------------


def test_controller_openapi_lists_exactly_the_shared_run_statuses() -> None:
    from dapo_controller.app import create_app
    from dapo_controller.settings import ControllerSettings

    schema = create_app(ControllerSettings(run_loop=False)).openapi()
    assert _enum(schema, "components", "schemas", "RunRecord", "properties", "status") == list(RUN_STATUSES)
    params = schema["paths"]["/v1/runs"]["get"]["parameters"]
    status = next(p for p in params if p["name"] == "status")
    assert _enum(status, "schema") == list(RUN_STATUSES)


def test_terminal_statuses_are_run_statuses_and_pending_running_are_not() -> None:
    assert set(TERMINAL_STATUSES) < set(RUN_STATUSES)
    assert [s for s in RUN_STATUSES if not is_terminal(s)] == ["pending", "running"]
    assert not is_terminal("finished")


def test_store_refuses_a_status_outside_the_shared_ones() -> None:
    from dapo_controller.store import _encode

    for status in RUN_STATUSES:
        assert _encode("status", status) == status
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        _encode("status", "done")


# --- run events -------------------------------------------------------------------------------------


def test_run_event_has_kind_message_time_and_extra_fields() -> None:
    event = run_event("trainer_error", "rank 1 raised", source="trainer", rank=1)
    assert event["kind"] == "trainer_error" and event["message"] == "rank 1 raised"
    assert isinstance(event["time"], float) and event["time"] > 1.7e9
    assert (event["source"], event["rank"]) == ("trainer", 1)
    entry = event_entry("created", "run created")
    assert list(entry) == ["data"]
    assert {k: v for k, v in json.loads(entry["data"]).items() if k != "time"} == {
        "kind": "created",
        "message": "run created",
    }


def test_run_event_refuses_to_overwrite_its_own_fields() -> None:
    with pytest.raises(ValueError, match=r"\['time'\] are set by run_event"):
        run_event("x", "y", time=0.0)


def test_trainer_reporter_writes_the_shared_event_record() -> None:
    from dapo_trainer.metrics import RunReporter

    class Recorder:  # records XADDs; the reporter's Redis client is all that is faked
        def __init__(self) -> None:
            self.calls: list[tuple[str, dict[str, str]]] = []

        def xadd(self, key: str, fields: dict[str, str], **_: Any) -> None:
            self.calls.append((key, fields))

    redis = Recorder()
    RunReporter(redis, "r1").event("push_skipped", "server gone", address="a:1")  # type: ignore[arg-type]
    [(key, fields)] = redis.calls
    assert key == keys.events_stream("r1")
    record = json.loads(fields["data"])
    assert set(record) == {"kind", "message", "time", "source", "address"}
    assert (record["kind"], record["source"], record["address"]) == ("push_skipped", "trainer", "a:1")


# --- verifier names ---------------------------------------------------------------------------------


def test_config_schema_accepts_exactly_the_shared_verifiers() -> None:
    assert _enum(MathEnvConfig.model_json_schema(), "properties", "verifier") == list(VERIFIERS)
    for name in VERIFIERS:
        assert MathEnvConfig(verifier=name).verifier == name
    with pytest.raises(ValidationError, match="verifier"):
        MathEnvConfig(verifier="sympy")  # type: ignore[arg-type]


def test_reward_service_accepts_exactly_the_shared_verifiers() -> None:
    from dapo_reward.http_app import router
    from dapo_reward.models import ScoreRequestModel
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(router)
    request = app.openapi()["components"]["schemas"]["ScoreRequestModel"]
    assert _enum(request, "properties", "verifier") == list(VERIFIERS)
    with pytest.raises(ValidationError, match="verifier"):
        ScoreRequestModel(verifier="sympy", items=[])  # type: ignore[arg-type]


def test_nemo_verifier_names_map_onto_shared_ones() -> None:
    from dapo.config.nemo import _VERIFIERS

    assert set(_VERIFIERS.values()) <= set(VERIFIERS)
    for nemo_name, ours in _VERIFIERS.items():
        out, _ = translate({"env": {"math": {"math_verify_impl": nemo_name}}})
        assert out["env"]["math"]["verifier"] == ours


# --- dtypes -------------------------------------------------------------------------------------------


def _tensor(dtype: str, num_elements: int = 3) -> TensorBytes:
    return TensorBytes("w", dtype, (num_elements,), memoryview(bytes(range(num_elements * item_size(dtype)))))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_weights_contract_takes_every_dtype_of_the_table(dtype: str) -> None:
    tensor = _tensor(dtype)
    assembler = WeightAssembler()
    messages = list(encode_update(1, [tensor], chunk_bytes=4))
    assert messages[0].manifest.tensors[0].dtype == dtype
    for message in messages:
        assembler.add(message)
    [received] = assembler.finish().values()
    assert (received.dtype, bytes(received.data)) == (dtype, bytes(tensor.data))
    assert messages[0].manifest.tensors[0].crc32 == zlib.crc32(tensor.data)


def test_weights_contract_refuses_a_dtype_outside_the_table() -> None:
    message = next(encode_update(1, [_tensor("float32")]))
    message.manifest.tensors[0].dtype = "float8_e4m3fn"
    with pytest.raises(WeightUpdateError, match="tensor 'w': unsupported dtype 'float8_e4m3fn'"):
        WeightAssembler().add(message)


def test_dtype_table_agrees_with_torch_and_safetensors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {name: torch.zeros(2, dtype=torch_dtype(name)) for name in DTYPES}
    for name, tensor in tensors.items():
        assert tensor.element_size() == item_size(name)
        assert name_of(tensor.dtype) == name
    save_file(tensors, str(tmp_path / "all.safetensors"))
    header, _ = read_header(tmp_path / "all.safetensors")
    for name in DTYPES:
        assert header[name]["dtype"] == safetensors_code(name)
        assert from_safetensors(header[name]["dtype"]) == name
    with pytest.raises(ValueError, match="unsupported safetensors dtype 'F8_E4M3'"):
        from_safetensors("F8_E4M3")
    with pytest.raises(ValueError, match="unsupported dtype 'complex64'"):
        name_of(torch.complex64)


def test_config_dtypes_are_the_tables() -> None:
    assert set(SERVED_DTYPES) <= set(DTYPES) and set(TRAIN_PRECISIONS) <= set(SERVED_DTYPES)
    assert _enum(VllmConfig.model_json_schema(), "properties", "precision") == list(SERVED_DTYPES)
    assert _enum(PolicyConfig.model_json_schema(), "properties", "precision") == list(TRAIN_PRECISIONS)
    assert RunConfig.model_validate({}).policy.precision in TRAIN_PRECISIONS


def test_staging_file_layout_is_readable_by_safetensors(tmp_path: Path) -> None:
    from dapo_rollout.weight_update import STAGED_FILE, StagingFile
    from safetensors.numpy import load_file

    staging = StagingFile({"a": ("float32", (2, 3)), "b": ("int64", (4,))}, str(tmp_path))
    views = staging.views()
    views["a"][:] = np.arange(6, dtype=np.float32).tobytes()
    views["b"][:] = np.array([7, 8, 9, 10], dtype=np.int64).tobytes()
    for view in views.values():
        view.release()
    assert staging.directory is not None
    loaded = load_file(str(Path(staging.directory) / STAGED_FILE))
    np.testing.assert_array_equal(loaded["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(loaded["b"], [7, 8, 9, 10])
    staging.close()


# --- the safetensors header -------------------------------------------------------------------------


def test_parse_header_reads_what_safetensors_writes() -> None:
    from safetensors.numpy import save

    payload = save({"x": np.zeros((2, 5), dtype=np.float16)}, metadata={"format": "1"})
    header, start = parse_header(payload)
    assert header["__metadata__"] == {"format": "1"}
    assert header["x"]["dtype"] == "F16" and header["x"]["shape"] == [2, 5]
    begin, end = header["x"]["data_offsets"]
    assert len(payload) == start + end and end - begin == 2 * 5 * 2


def test_encode_header_aligns_the_data_and_round_trips() -> None:
    encoded = encode_header({"__metadata__": {"format": "pt"}, "t": {"dtype": "U8", "shape": [1]}})
    assert len(encoded) % 8 == 0
    header, start = parse_header(encoded + b"\x05")
    assert start == len(encoded) and header["t"] == {"dtype": "U8", "shape": [1]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x00", "too short for a safetensors header"),
        ((100).to_bytes(8, "little") + b"{}", "claims 100 bytes, only 2 follow"),
        ((2).to_bytes(8, "little") + b"[]", "is a JSON list, expected an object"),
        ((2).to_bytes(8, "little") + b"{x", "not JSON"),
    ],
)
def test_parse_header_names_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_header(payload)


def test_read_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes((50).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match=r"cut\.safetensors: safetensors header claims 50 bytes"):
        read_header(path)


def test_batch_payload_metadata_goes_through_the_shared_reader() -> None:
    from dapo.batch import BatchFormatError, TrainBatch

    batch = TrainBatch(
        run_id="r",
        step=3,
        prompt_ids=[np.array([1, 2], dtype=np.int64)],
        response_ids=[np.array([3], dtype=np.int64)],
        rollout_logprobs=[np.array([-0.5], dtype=np.float32)],
        loss_mask=[np.array([1], dtype=np.float32)],
        advantages=np.array([1.0], dtype=np.float32),
        versions=np.array([0], dtype=np.int64),
    )
    fields = batch.to_fields()
    assert TrainBatch.from_fields(fields).step == 3
    fields["payload"] = fields["payload"][:8] + b"{}"
    with pytest.raises(BatchFormatError, match="field 'payload' is not a safetensors buffer"):
        TrainBatch.from_fields(fields)


# --- the GSM8K final answer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "answer"),
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("so 2+2=4\n#### 1,234,567", "1234567"),
        ("#### -3.5 \n", "-3.5"),
        ("a #### note #### 10", "10"),  # the last marker is the final answer
        ("#### 2,1", "2,1"),  # not a number in groups of three: kept as written
    ],
)
def test_gsm8k_final_answer(solution: str, answer: str) -> None:
    assert gsm8k_final_answer(solution) == answer


@pytest.mark.parametrize("solution", ["it is 4", "#### ", "####"])
def test_gsm8k_without_a_final_answer_is_an_error(solution: str) -> None:
    with pytest.raises(NoFinalAnswer, match="no final '#### <number>' line"):
        gsm8k_final_answer(solution)


def test_thousands_separators() -> None:
    assert without_thousands_separators("-12,345.5") == "-12345.5"
    assert without_thousands_separators("1,23") == "1,23"


def test_reward_reads_a_gsm8k_gold_with_the_shared_rule() -> None:
    from dapo_reward.verifiers import verify_item

    assert verify_item("dapo", "Answer: 1234", "so\n#### 1,234", 5) == (True, "1234", "")
    assert verify_item("dapo", "Answer: 10", "a #### 3 #### 10", 5)[0]
    assert verify_item("dapo", "Answer: 1", "#### ", 5) == (False, "", "unparsable_gold")
    assert verify_item("math_verify", "The answer is $1234$.", "so\n#### 1,234", 5)[:1] == (True,)


def test_validated_steps_key_lives_under_the_run() -> None:
    assert keys.validated_steps("r1").startswith(keys.run_record("r1") + ":")
    assert keys.validated_steps("r1") != keys.controller_state("r1")
