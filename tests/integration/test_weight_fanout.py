"""Weight fan-out over loopback: a real WeightPublisher and real rollout-server processes without vLLM
(tests/weight_receiver.py: the rollout gRPC server and WeightUpdater, with an engine stand-in that records
what it applied and the CRC-32 of every tensor read back from its staged file).

The version goes out once and the receivers relay it among themselves; a receiver SIGKILLed in the
middle of the relay does not strand the ones behind it (they resume from the publisher and still apply
the version, verified); a server that starts late fetches the newest version by itself."""

from __future__ import annotations

import signal
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from dapo.weight_publisher import WeightPublisher
from dapo.weights import TensorBytes
from tests.weight_receiver import Receivers

SHAPES = {
    "embed.weight": (512, 256),
    "layer.0.weight": (256, 256),
    "layer.1.weight": (256, 256),
    "norm": (256,),
}
SPECS = {name: ("float32", shape) for name, shape in SHAPES.items()}


def version_tensors(seed: int) -> list[TensorBytes]:
    rng = np.random.default_rng(seed)
    return [
        TensorBytes(
            name, "float32", shape, memoryview(rng.standard_normal(shape).astype(np.float32).tobytes())
        )
        for name, shape in SHAPES.items()
    ]


def crcs(tensors: list[TensorBytes]) -> dict[str, int]:
    return {t.name: zlib.crc32(t.data) for t in tensors}


@pytest.fixture
def publisher():
    pub = WeightPublisher(host="127.0.0.1", port=0, chunk_bytes=8 << 10).start()
    try:
        yield pub
    finally:
        pub.stop()


@pytest.mark.parametrize("fanout", [1, 2])
def test_a_version_is_encoded_once_and_relayed_to_every_server(
    publisher: WeightPublisher, tmp_path: Path, fanout: int
) -> None:
    with Receivers(5, SPECS, tmp_path, publisher.address, staging_root=tmp_path) as receivers:
        receivers.wait_ready()
        tensors = version_tensors(1)
        encoded = publisher.publish(1, tensors, run_id="run-a")
        outcomes = publisher.fan_out(encoded, receivers.addresses, fanout=fanout, timeout=60)
        assert [o.address for o in outcomes] == receivers.addresses
        assert all(o.is_served and o.source == "upstream" and not o.error for o in outcomes), outcomes
        applied = receivers.applied()
        assert sorted(applied) == sorted(receivers.addresses)
        for record in applied.values():
            assert (record["version"], record["run_id"]) == (1, "run-a")
            assert record["crc32"] == crcs(tensors)
        assert publisher.num_encodes == 1
        version_bytes = encoded.num_bytes
        assert version_bytes <= publisher.egress_bytes < 1.05 * version_bytes

        # The next version: the servers take it the same way; one more encode, one more version's bytes.
        encoded = publisher.publish(2, version_tensors(2), run_id="run-a")
        assert all(o.is_served for o in publisher.fan_out(encoded, receivers.addresses, fanout=fanout))
        assert {r["version"] for r in receivers.applied().values()} == {2}
        assert publisher.num_encodes == 2 and publisher.egress_bytes < 2.1 * version_bytes


def test_a_relay_killed_mid_stream_strands_nobody(publisher: WeightPublisher, tmp_path: Path) -> None:
    victim = 1  # the chain: publisher -> 0 -> 1 -> 2 -> 3 -> 4; 1 takes one message per 5 ms
    with Receivers(
        5,
        SPECS,
        tmp_path,
        publisher.address,
        staging_root=tmp_path,
        extra_args={victim: ["--pace-s", "0.005"]},
    ) as receivers:
        receivers.wait_ready()
        tensors = version_tensors(3)
        encoded = publisher.publish(3, tensors, run_id="run-a")
        assert encoded.num_chunks == 129
        result: list = []
        fan_out = threading.Thread(
            target=lambda: result.extend(
                publisher.fan_out(encoded, receivers.addresses, timeout=60, stall_s=5)
            )
        )
        fan_out.start()
        deadline = time.monotonic() + 30
        while receivers.progress(victim) < 40:
            assert time.monotonic() < deadline, "the relay never got going"
            time.sleep(0.01)
        receivers.processes[victim].send_signal(signal.SIGKILL)
        fan_out.join(60)
        assert not fan_out.is_alive()
        by_address = {o.address: o for o in result}
        addresses = receivers.addresses
        dead = by_address[addresses[victim]]
        assert not dead.is_served and f"relay to {addresses[victim]} failed" in dead.error
        # The one behind the dead relay resumed the rest from the publisher and kept relaying it.
        orphan = by_address[addresses[victim + 1]]
        assert orphan.is_served and orphan.source.startswith("publisher, resumed at chunk "), orphan
        resumed_at = int(orphan.source.removeprefix("publisher, resumed at chunk ").split()[0])
        assert 20 <= resumed_at < encoded.num_chunks  # the victim had taken 40 messages when killed
        for index in (0, 2, 3, 4):
            assert by_address[addresses[index]].is_served, by_address[addresses[index]]
        for index in (3, 4):
            assert by_address[addresses[index]].source == "upstream"
        applied = receivers.applied()
        assert addresses[victim] not in applied
        for index in (0, 2, 3, 4):
            record = applied[addresses[index]]
            assert record["version"] == 3 and record["crc32"] == crcs(tensors)
        assert publisher.num_encodes == 1
        # The publisher sent the version once, plus the part after the resume point.
        assert publisher.egress_bytes < encoded.num_bytes * (1 + (129 - resumed_at) / 129) + (1 << 20)


@pytest.mark.parametrize("victim", [0, 1])
def test_a_relay_that_dies_before_relaying_anything_strands_nobody(
    publisher: WeightPublisher, tmp_path: Path, victim: int
) -> None:
    """The chain publisher -> 0 -> 1 -> 2 -> 3; the victim dies on the manifest, before it opens its own
    downstream: nobody behind it hears of the version from the relay, so the publisher must send it again."""
    with Receivers(
        4,
        SPECS,
        tmp_path,
        publisher.address,
        staging_root=tmp_path,
        extra_args={victim: ["--die-after", "1"]},
    ) as receivers:
        receivers.wait_ready()
        tensors = version_tensors(4)
        encoded = publisher.publish(4, tensors, run_id="run-a")
        started = time.monotonic()
        outcomes = publisher.fan_out(encoded, receivers.addresses, timeout=120, stall_s=5)
        elapsed = time.monotonic() - started
        assert receivers.processes[victim].wait(10) == -signal.SIGKILL
        by_address = {o.address: o for o in outcomes}
        addresses = receivers.addresses
        assert not by_address[addresses[victim]].is_served, by_address[addresses[victim]]
        alive = [a for i, a in enumerate(addresses) if i != victim]
        assert all(by_address[a].is_served for a in alive), outcomes
        applied = receivers.applied()
        assert sorted(applied) == sorted(alive)
        assert all(r["version"] == 4 and r["crc32"] == crcs(tensors) for r in applied.values())
        assert elapsed < 60, f"the fan-out took {elapsed:.0f} s: it waited for its timeout"  # not 120 s
        assert publisher.num_encodes == 1


def test_a_server_that_starts_late_fetches_the_newest_version(
    publisher: WeightPublisher, tmp_path: Path
) -> None:
    with Receivers(2, SPECS, tmp_path / "early", publisher.address, staging_root=tmp_path) as early:
        early.wait_ready()
        encoded = publisher.publish(0, version_tensors(10), run_id="run-b")
        assert all(o.is_served for o in publisher.fan_out(encoded, early.addresses))
        newest = version_tensors(11)
        encoded = publisher.publish(1, newest, run_id="run-b")
        assert all(o.is_served for o in publisher.fan_out(encoded, early.addresses))
        with Receivers(
            1,
            SPECS,
            tmp_path / "late",
            publisher.address,
            staging_root=tmp_path,
            extra_args={0: ["--poll-s", "0.2"]},
        ) as late:
            late.wait_ready()
            deadline = time.monotonic() + 30
            while late.addresses[0] not in late.applied():
                assert time.monotonic() < deadline, late.log_of(0)
                time.sleep(0.05)
            record = late.applied()[late.addresses[0]]
            assert (record["version"], record["run_id"]) == (1, "run-b") and record["crc32"] == crcs(newest)
            # In the next fan-out the late server is one more link; the ones holding it already say so.
            outcomes = publisher.fan_out(encoded, [*late.addresses, *early.addresses])
            assert [o.source for o in outcomes] == ["already served"] * 3 and all(
                o.is_served for o in outcomes
            )
        assert publisher.num_encodes == 2


def test_the_trainer_outlet_fans_out_off_its_thread_and_reports_every_server(
    redis_server,
    redis_client,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    import torch
    from dapo_trainer.publish import WeightOutlet
    from dapo_trainer.redis_io import RetryingRedis

    from dapo import keys
    from dapo.local_redis import free_port

    failures: list[tuple[str, str]] = []
    redis = RetryingRedis(redis_server.url, retry_s=5)
    outlet = WeightOutlet(
        "127.0.0.1", 0, redis, [], push_timeout_s=30, on_push_failure=lambda a, m: failures.append((a, m))
    )
    gone = f"127.0.0.1:{free_port()}"  # in the server set, but nothing listens there
    gone_first = "127.0.0.1:1"  # sorts first: the relay's head is down, the next server heads it
    try:
        with Receivers(3, SPECS, tmp_path, outlet.publisher.address, staging_root=tmp_path) as receivers:
            receivers.wait_ready()
            redis_client.sadd(keys.rollout_servers(), *receivers.addresses, gone, gone_first)
            state = {
                t.name: torch.frombuffer(bytearray(t.data), dtype=torch.float32).reshape(t.shape)
                for t in version_tensors(5)
            }
            outlet.publish(0, state, run_id="run-c")  # returns at once: the fan-out runs on its thread
            report = outlet.wait(30)
            assert report is not None and report.version == 0
            by_address = {o.address: o for o in report.outcomes}
            assert sorted(by_address) == sorted([*receivers.addresses, gone, gone_first])
            assert all(by_address[a].error is None for a in receivers.addresses)
            assert "UNAVAILABLE" in (by_address[gone].error or "")
            assert (by_address[gone_first].error or "").startswith("unreachable: UNAVAILABLE")
            assert sorted(a for a, _ in failures) == sorted([gone, gone_first])
            assert report.egress_bytes < 1.05 * report.num_bytes
            assert "reached 3 of 5 rollout servers" in report.summary()
            assert {r["version"] for r in receivers.applied().values()} == {0}
    finally:
        outlet.stop()
        redis.close()


def test_the_outlet_announces_a_version_once_it_is_out_and_only_the_newest_of_those_waiting(
    redis_server,
    redis_client,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """What an asynchronous run relies on: `publish` returns at once, the fan-out thread announces a
    version after the servers hold it, and versions overtaken while waiting are skipped."""
    import torch
    from dapo_trainer.publish import WeightOutlet
    from dapo_trainer.redis_io import RetryingRedis

    from dapo import keys

    redis = RetryingRedis(redis_server.url, retry_s=5)
    outlet = WeightOutlet("127.0.0.1", 0, redis, [], push_timeout_s=30, on_push_failure=lambda a, m: None)
    announced: list[tuple[int, str, int]] = []
    release = threading.Event()
    try:
        with Receivers(1, SPECS, tmp_path, outlet.publisher.address, staging_root=tmp_path) as receivers:
            receivers.wait_ready()
            redis_client.sadd(keys.rollout_servers(), *receivers.addresses)

            def announce(version: int) -> None:
                served = receivers.applied()[receivers.addresses[0]]["version"]
                announced.append((version, threading.current_thread().name, served))
                assert release.wait(30)  # version 0's fan-out thread is held until 1, 2, 3 are handed over

            for version in range(4):
                state = {
                    t.name: torch.frombuffer(bytearray(t.data), dtype=torch.float32).reshape(t.shape)
                    for t in version_tensors(version)
                }
                started = time.perf_counter()
                outlet.publish(version, state, run_id="run-o", announce=announce)
                assert time.perf_counter() - started < 1.0  # hands over; the fan-out is the thread's
            deadline = time.monotonic() + 30
            while not announced and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            outlet.wait(60)
            applied = receivers.applied()[receivers.addresses[0]]
    finally:
        release.set()
        outlet.stop()
        redis.close()
    assert [v for v, _, _ in announced] == [0, 3]  # 1 and 2 were overtaken while 0 went out
    assert all(name == "weight-fan-out" for _, name, _ in announced)  # not the caller's thread
    assert all(served == version for version, _, served in announced)  # announced once it is out
    assert applied["crc32"] == crcs(version_tensors(3))
    assert outlet.last_publish_s is not None and outlet.last_publish_s > 0


def test_a_failed_announce_is_raised_on_the_trainers_thread_and_the_next_version_goes_out(
    redis_server,  # noqa: ANN001
) -> None:
    import torch
    from dapo_trainer.publish import WeightOutlet
    from dapo_trainer.redis_io import RetryingRedis

    redis = RetryingRedis(redis_server.url, retry_s=5)
    outlet = WeightOutlet("127.0.0.1", 0, redis, [], push_timeout_s=30, on_push_failure=lambda a, m: None)
    announced: list[int] = []

    def fail(version: int) -> None:
        raise RuntimeError(f"Redis gone while announcing version {version}")

    state = {"w": torch.zeros(4)}
    try:
        outlet.publish(1, state, run_id="run-f", announce=fail)
        with pytest.raises(RuntimeError, match="announcing version 1"):
            outlet.wait(30)
        outlet.publish(2, state, run_id="run-f", announce=announced.append)
        outlet.wait(30)
        outlet.publish(3, state, run_id="run-f", announce=fail)
        deadline = time.monotonic() + 30
        while outlet._failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="announcing version 3"):  # an asynchronous run's next publish
            outlet.publish(4, state, run_id="run-f", announce=announced.append)
        outlet.wait(30)
        assert outlet.publisher.latest_version == 3  # version 4 was not handed over
    finally:
        outlet.publish(5, state, run_id="run-f", announce=fail)
        outlet.stop()  # a failure at the end is logged, not raised
        redis.close()
    assert announced == [2]


def test_a_server_that_refuses_the_version_still_relays_it(
    publisher: WeightPublisher, tmp_path: Path
) -> None:
    from dapo.weight_publisher import push_weights

    with Receivers(3, SPECS, tmp_path, publisher.address, staging_root=tmp_path) as receivers:
        receivers.wait_ready()
        ahead = version_tensors(9)
        push_weights(receivers.addresses[1], 9, ahead, timeout=30, run_id="run-a")  # the middle one is ahead
        tensors = version_tensors(3)
        outcomes = publisher.fan_out(publisher.publish(3, tensors, run_id="run-a"), receivers.addresses)
        first, middle, last = outcomes
        assert first.is_served and last.is_served and last.source == "upstream"
        assert not middle.is_served and "older than the served version 9" in middle.error
        applied = receivers.applied()
        assert applied[receivers.addresses[1]]["crc32"] == crcs(ahead)  # untouched
        assert applied[receivers.addresses[2]]["crc32"] == crcs(tensors)
