"""The committed gRPC stubs are exactly what scripts/gen_proto.sh generates from proto/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "dapo/v1").glob("*_pb2*.py*"))
    assert generated == committed
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (ROOT / p).read_bytes()]
    assert stale == [], f"stale stubs (run scripts/gen_proto.sh): {stale}"


def test_services_and_messages_are_in_package_dapo_v1() -> None:
    from dapo.v1 import reward_pb2, rollout_pb2, weights_pb2

    assert rollout_pb2.DESCRIPTOR.package == "dapo.v1"
    assert set(rollout_pb2.DESCRIPTOR.services_by_name) == {"Rollout"}
    assert set(reward_pb2.DESCRIPTOR.services_by_name) == {"Reward"}
    assert set(weights_pb2.DESCRIPTOR.services_by_name) == {"WeightPublisher"}
    methods = {m.name for m in rollout_pb2.DESCRIPTOR.services_by_name["Rollout"].methods}
    assert methods == {"Generate", "UpdateWeights", "Status"}
