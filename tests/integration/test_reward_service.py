"""The reward service on loopback, over gRPC and REST: verdicts, the last final answer, unparsable golds,
grading options, hostile input, a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import httpx
import pytest
from dapo_reward.scoring import ResultCache
from dapo_reward.service import RewardService
from dapo_reward.settings import RewardSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dapo import rpc
from dapo.config.schema import MathVerifyConfig
from dapo.v1 import reward_pb2, reward_pb2_grpc

TIMEOUT_S = 2


class Running:
    """A RewardService on its own event loop in a background thread."""

    def __init__(self, options: RewardSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = RewardService(options)
        self.call(self.service.start())
        self.grpc_address = f"127.0.0.1:{self.service.grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.service.http_port}"

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(120)

    def stop(self) -> None:
        self.call(self.service.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def reward() -> Iterator[Running]:
    running = Running(
        RewardSettings(
            grpc_port=0, http_port=0, workers=2, timeout=TIMEOUT_S, max_response_chars=200_000, cache_size=0
        )
    )
    try:
        yield running
    finally:
        running.stop()


def score_grpc(
    address: str,
    verifier: str,
    items: list[tuple[str, str]],
    binary: bool = False,
    math_verify: dict[str, Any] | None = None,
) -> list[Any]:
    with grpc.insecure_channel(address, options=rpc.message_limits()) as channel:
        stub = reward_pb2_grpc.RewardStub(channel)
        request = reward_pb2.ScoreRequest(
            verifier=verifier,
            binary=binary,
            items=[
                reward_pb2.ScoreItem(id=str(i), response=r, ground_truth=g) for i, (r, g) in enumerate(items)
            ],
            math_verify=reward_pb2.MathVerifyOptions(**(math_verify or {})),
        )
        return list(stub.Score(request, timeout=600).results)


def post_score(
    url: str, verifier: str, items: list[tuple[str, str]], math_verify: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {
        "verifier": verifier,
        "items": [{"id": str(i), "response": r, "ground_truth": g} for i, (r, g) in enumerate(items)],
    }
    if math_verify is not None:
        body["math_verify"] = math_verify
    return httpx.post(f"{url}/v1/score", json=body, timeout=600)


def score_rest(
    url: str, verifier: str, items: list[tuple[str, str]], math_verify: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    reply = post_score(url, verifier, items, math_verify)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"]


def score_both(
    reward: Running, items: list[tuple[str, str]], math_verify: dict[str, Any] | None = None
) -> list[tuple[bool, str]]:
    """(correct, error) per item, the same over gRPC and over REST."""
    over_grpc = [
        (r.correct, r.error)
        for r in score_grpc(reward.grpc_address, "math_verify", items, False, math_verify)
    ]
    over_rest = [
        (r["correct"], r["error"]) for r in score_rest(reward.http_url, "math_verify", items, math_verify)
    ]
    assert over_grpc == over_rest
    return over_grpc


# (verifier, response, ground truth, expected correct)
VERDICTS = [
    ("math_verify", "The total is \\boxed{1,234}.", "1234", True),
    ("math_verify", "\\boxed{0.5}", "\\frac{1}{2}", True),
    ("math_verify", "$\\frac{3}{4}$", "3/4", True),
    ("math_verify", "\\boxed{-7}", "-7", True),
    ("math_verify", "\\boxed{7}", "-7", False),
    ("math_verify", "\\boxed{\\boxed{12}}", "12", True),
    ("math_verify", "85", "85", True),
    ("math_verify", "84", "85", False),
    ("math_verify", "So she sold 72 clips.", "Natalia sold 48+24 = 72.\n#### 72", True),
    ("math_verify", "\\boxed{(1, 3]}", "(1,3]", True),
    ("math_verify", "\\boxed{[1, 3]}", "(1,3]", False),
    ("math_verify", "\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}", True),
    ("math_verify", "\\boxed{5\\text{ cm}}", "5", True),
    ("math_verify", "", "5", False),
    ("math_verify", "I don't know", "5", False),
    ("dapo", "work...\nAnswer: 1,234", "1234", True),
    ("dapo", "Answer: $\\frac12$", "\\frac{1}{2}", True),
    ("dapo", "Answer: 10 \\text{ dollars}", "10", True),
    ("dapo", "Answer: 9", "#### 10", False),
    ("dapo", "no answer line", "10", False),
    ("dapo_boxed", "thus \\boxed{42}", "42", True),
]


@pytest.mark.parametrize("front", ["grpc", "rest"])
def test_verdict_table(reward: Running, front: str) -> None:
    for verifier in ("math_verify", "dapo", "dapo_boxed"):
        rows = [(r, g, ok) for v, r, g, ok in VERDICTS if v == verifier]
        items = [(r, g) for r, g, _ in rows]
        if front == "grpc":
            got = [(x.correct, x.score, x.error) for x in score_grpc(reward.grpc_address, verifier, items)]
        else:
            got = [
                (x["correct"], x["score"], x["error"]) for x in score_rest(reward.http_url, verifier, items)
            ]
        expected = [(ok, 1.0 if ok else -1.0, "") for _, _, ok in rows]
        assert got == expected, [
            (r[0][:40], g, e) for r, g, e in zip(rows, got, expected, strict=True) if g != e
        ]


def test_binary_scores_and_extracted(reward: Running) -> None:
    [right, wrong] = score_grpc(
        reward.grpc_address, "math_verify", [("\\boxed{85}", "85"), ("84", "85")], binary=True
    )
    assert (right.score, wrong.score) == (1.0, 0.0)
    assert right.extracted == "85"


def test_bad_requests_name_the_field(reward: Running) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        score_grpc(reward.grpc_address, "regex", [("1", "1")])
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "verifier" in excinfo.value.details()
    reply = httpx.post(f"{reward.http_url}/v1/score", json={"verifier": "regex", "items": []})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "verifier"]
    reply = httpx.post(f"{reward.http_url}/v1/score", json={"items": [{"id": "1", "response": "x"}]})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == [
        "body",
        "items",
        0,
        "ground_truth",
    ]


# A model that corrects itself: its last final answer counts, the boxes before it do not join it.
SELF_CORRECTIONS = [
    ("My first guess is \\boxed{2}. Checking again, so the answer is \\boxed{3}.", "3", True),
    ("My first guess is \\boxed{2}. Checking again, so the answer is \\boxed{3}.", "2", False),
    ("\\boxed{2}, wait, no: \\boxed{3}", "3", True),
    ("$x = \\boxed{5}$. Hmm, I dropped a sign: $x = \\boxed{-5}$", "-5", True),
    ("I get \\boxed{7}.\nRechecking the carry, it is 8.\nAnswer: 8", "8", True),
    ("The roots are \\boxed{-2} and \\boxed{1}.", "-2,1", True),  # one answer in two boxes
]


def test_the_last_final_answer_counts(reward: Running) -> None:
    got = score_both(reward, [(response, gold) for response, gold, _ in SELF_CORRECTIONS])
    assert got == [(correct, "") for _, _, correct in SELF_CORRECTIONS]


# Golds that math-verify reads as no mathematical object (it would compare the first as a string).
UNPARSABLE_GOLD = "$$x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}$$"
SAME_ANSWER = "$$\\boxed{x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}}$$"


def unparsable_gold_count(reward: Running) -> float:
    families = text_string_to_metric_families(httpx.get(f"{reward.http_url}/metrics").text)
    errors = next(f for f in families if f.name == "dapo_reward_errors")
    return next(s.value for s in errors.samples if s.labels == {"error": "unparsable_gold"})


def test_an_unparsable_gold_is_reported_not_compared(reward: Running) -> None:
    before = unparsable_gold_count(reward)
    items = [(SAME_ANSWER, UNPARSABLE_GOLD), ("\\boxed{1}", "\\frac{"), ("\\boxed{1}", "")]
    assert score_both(reward, items) == [(False, "unparsable_gold")] * 3
    assert unparsable_gold_count(reward) == before + 6  # over gRPC and over REST
    # only when the caller asks for it is the gold compared as a string
    asked = score_both(
        reward, items[:1] + [("\\boxed{x = 1/2}", UNPARSABLE_GOLD)], {"string_comparison": True}
    )
    assert asked == [(True, ""), (False, "")]
    assert unparsable_gold_count(reward) == before + 6


# (response, gold, grading options of the request, correct)
GRADED = [
    ("\\boxed{0.333}", "\\frac{1}{3}", {}, False),
    ("\\boxed{0.333}", "\\frac{1}{3}", {"float_rounding": 3}, True),
    ("$f(y)$", "$f(x)$", {}, False),
    ("$f(y)$", "$f(x)$", {"strict": False}, True),
    ("$-2 \\le x \\le 7$", "$x \\in [-2,7]$", {}, False),
    ("$-2 \\le x \\le 7$", "$x \\in [-2,7]$", {"allow_set_relation_comp": True}, True),
]


def test_grading_options_per_request(reward: Running) -> None:
    for response, gold, options, correct in GRADED:
        assert score_both(reward, [(response, gold)], options) == [(correct, "")], (response, options)


def test_service_defaults_apply_and_a_request_overrides_them(reward: Running) -> None:
    scorer = reward.service.scorer
    defaults, cache = scorer.math_verify, scorer.cache
    scorer.math_verify = MathVerifyConfig(float_rounding=3)  # as from env.math.math_verify
    scorer.cache = ResultCache(100)  # verdicts under different options must not share a cache entry
    try:
        item = [("\\boxed{0.333}", "\\frac{1}{3}")]
        assert score_both(reward, item) == [(True, "")]
        assert score_both(reward, item, {"float_rounding": 6}) == [(False, "")]
        assert score_both(reward, item, {"strict": True}) == [(True, "")]  # the others keep the defaults
    finally:
        scorer.math_verify, scorer.cache = defaults, cache


def test_bad_grading_options_name_the_field(reward: Running) -> None:
    item = [("\\boxed{1}", "1")]
    for options, field in [
        ({"float_rounding": -1}, "float_rounding"),
        ({"numeric_precision": 0}, "numeric_precision"),
    ]:
        with pytest.raises(grpc.RpcError) as excinfo:
            score_grpc(reward.grpc_address, "math_verify", item, math_verify=options)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"math_verify.{field}" in excinfo.value.details()
        reply = post_score(reward.http_url, "math_verify", item, options)
        assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "math_verify", field]
    reply = post_score(reward.http_url, "math_verify", item, {"rounding": 3})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == [
        "body",
        "math_verify",
        "rounding",
    ]
    # grading options of math-verify do not apply to DAPO's rule
    with pytest.raises(grpc.RpcError) as excinfo:
        score_grpc(reward.grpc_address, "dapo", item, math_verify={"strict": False})
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "math_verify: grading options apply only to verifier math_verify" in excinfo.value.details()
    reply = post_score(reward.http_url, "dapo", item, {"strict": False})
    assert reply.status_code == 422 and "apply only to verifier math_verify" in reply.json()["detail"]


HOSTILE = [
    ("huge", "1" * 1_000_000, "1", "too_large"),
    ("nested braces", "\\boxed{" + "{" * 10_000 + "}" * 10_000 + "}", "1", None),
    ("tower", "\\boxed{9^{9^{9^{9}}}}", "1", None),
    ("malformed", "\\frac{\\sqrt{}{{\\left( \\boxed{", "2", None),
    ("control characters", "\x00\x01\x1b[31m\x7f 5 \x00", "5", None),
]


@pytest.mark.parametrize(("name", "response", "truth", "error"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_verdict_in_time(
    reward: Running, name: str, response: str, truth: str, error: str | None
) -> None:
    started = time.monotonic()
    [result] = score_grpc(reward.grpc_address, "math_verify", [(response, truth)])
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + 1.0, f"{name} took {elapsed:.1f} s"
    if error is not None:
        assert result.error == error
    if name != "control characters":
        assert result.correct is False and result.score == -1.0
    # the service keeps answering afterwards
    [after] = score_grpc(reward.grpc_address, "math_verify", [("\\boxed{3}", "3")])
    assert after.correct


def test_ten_thousand_items_in_one_batch(reward: Running) -> None:
    items = [(f"\\boxed{{{i % 97}}}", str(i % 97 if i % 3 else i % 97 + 1)) for i in range(10_000)]
    results = score_grpc(reward.grpc_address, "dapo_boxed", items)
    assert len(results) == 10_000
    assert [r.correct for r in results] == [bool(i % 3) for i in range(10_000)]


def test_a_killed_worker_is_replaced_and_the_batch_answers(reward: Running) -> None:
    pids = reward.service.pool.worker_pids()
    slow = ("\\boxed{2^{2^{30}}}", "1")  # keeps a worker busy until its timeout
    items = [slow] + [("\\boxed{4}", "4")] * 20
    done: list[Any] = []
    thread = threading.Thread(
        target=lambda: done.append(score_grpc(reward.grpc_address, "math_verify", items))
    )
    thread.start()
    time.sleep(0.5)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(60)
    [results] = done
    assert len(results) == 21
    assert all(r.correct for r in results[1:] if r.error == "")
    assert sum(r.error == "" for r in results) >= 15  # items after the kill were verified normally
    deadline = time.monotonic() + 3  # an idle worker that was killed is replaced within a poll period
    while reward.service.pool.num_alive() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reward.service.pool.num_alive() == 2
    assert set(reward.service.pool.worker_pids()).isdisjoint(pids)
    with grpc.insecure_channel(reward.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    metrics = httpx.get(f"{reward.http_url}/metrics").text
    assert "dapo_reward_items_total" in metrics and "dapo_reward_pool_workers 2.0" in metrics
