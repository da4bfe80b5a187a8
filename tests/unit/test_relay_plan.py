"""dapo.relay: how a fan-out plan is cut into children, and the manifest each child receives."""

from __future__ import annotations

import pytest

from dapo import relay
from dapo.v1 import weights_pb2
from dapo.weights import TensorBytes, build_manifest


def test_a_chain_and_a_tree_cut_the_downstream_into_contiguous_parts() -> None:
    servers = ["a", "b", "c", "d", "e"]
    assert relay.split_downstream(servers, 1) == [("a", ["b", "c", "d", "e"])]
    assert relay.split_downstream(servers, 2) == [("a", ["b", "c"]), ("d", ["e"])]
    assert relay.split_downstream(servers, 8) == [(s, []) for s in servers]
    assert relay.split_downstream([], 3) == []


def test_a_bad_plan_is_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="relay fanout must be >= 1, got 0"):
        relay.split_downstream(["a"], 0)
    with pytest.raises(ValueError, match="names a server twice"):
        relay.split_downstream(["a", "b", "a"], 1)


def test_every_child_gets_its_own_part_and_the_plans_settings() -> None:
    plan = weights_pb2.RelayPlan(address="root", downstream=["a", "b", "c"], fanout=2, stall_s=5)
    children = relay.child_plans(plan)
    assert [(c.address, list(c.downstream), c.fanout, c.stall_s) for c in children] == [
        ("a", ["b"], 2, 5.0),
        ("c", [], 2, 5.0),
    ]
    assert relay.subtree(plan) == ["root", "a", "b", "c"]
    assert relay.stall_seconds(weights_pb2.RelayPlan()) == relay.DEFAULT_STALL_S


def test_the_manifest_frame_carries_the_childs_plan_and_the_same_version() -> None:
    manifest = build_manifest(3, [TensorBytes("w", "float32", (2,), memoryview(b"\0" * 8))], 4, run_id="r")
    assert manifest.num_chunks == 2
    plan = weights_pb2.RelayPlan(address="a", downstream=["b"], fanout=1)
    framed = weights_pb2.WeightUpdateMessage.FromString(relay.manifest_frame(manifest, plan)).manifest
    assert framed.relay == plan and relay.same_version(framed, manifest)
    bare = weights_pb2.WeightUpdateMessage.FromString(relay.manifest_frame(framed, None)).manifest
    assert not bare.HasField("relay") and relay.same_version(bare, manifest)
    other = build_manifest(3, [TensorBytes("w", "float32", (2,), memoryview(b"\1" * 8))], 4, run_id="r")
    assert not relay.same_version(other, manifest)  # same version number, other bytes
