"""The fan-out plan of a weight version (`RelayPlan` in weights.proto): who streams to whom.

The publisher streams a version to the first server of its list; every receiver forwards the stream's
messages unchanged to its children while it stages its own copy. A receiver's `downstream` (the servers
behind it) is cut into `fanout` contiguous parts of near-equal size; the first server of each part is a
child, and the rest of the part is that child's own downstream. With fanout 1 the plan is a chain: every
server sends each byte once, so the version's time to the last server is its time to one server plus one
chunk's hop per server, and the publisher sends the version once whatever the number of servers.
"""

from __future__ import annotations

from collections.abc import Sequence

from dapo.v1 import weights_pb2

DEFAULT_STALL_S = 30.0


def split_downstream(downstream: Sequence[str], fanout: int) -> list[tuple[str, list[str]]]:
    """(child, the child's own downstream) for each child of a relay with these servers behind it."""
    if fanout < 1:
        raise ValueError(f"relay fanout must be >= 1, got {fanout}")
    if len(set(downstream)) != len(downstream):
        raise ValueError(f"a relay plan names a server twice: {list(downstream)}")
    if not downstream:
        return []
    num_parts = min(fanout, len(downstream))
    size, extra = divmod(len(downstream), num_parts)
    out, start = [], 0
    for index in range(num_parts):
        end = start + size + (1 if index < extra else 0)
        part = list(downstream[start:end])
        out.append((part[0], part[1:]))
        start = end
    return out


def child_plans(plan: weights_pb2.RelayPlan) -> list[weights_pb2.RelayPlan]:
    """The plans a relay hands its children (each names the child itself)."""
    return [
        weights_pb2.RelayPlan(address=child, downstream=rest, fanout=plan.fanout, stall_s=plan.stall_s)
        for child, rest in split_downstream(plan.downstream, max(plan.fanout, 1))
    ]


def stall_seconds(plan: weights_pb2.RelayPlan) -> float:
    return plan.stall_s if plan.stall_s > 0 else DEFAULT_STALL_S


def subtree(plan: weights_pb2.RelayPlan) -> list[str]:
    """The receiver and every server behind it."""
    return [plan.address, *plan.downstream]


def subtrees(plan: weights_pb2.RelayPlan) -> dict[str, list[str]]:
    """Every server of the plan, mapped to its subtree (itself and the servers it relays to)."""
    out = {plan.address: subtree(plan)}
    for child in child_plans(plan):
        out.update(subtrees(child))
    return out


def manifest_frame(manifest: weights_pb2.WeightManifest, plan: weights_pb2.RelayPlan | None) -> bytes:
    """The serialized first message of a stream: `manifest` with `plan` as its relay plan (None: none)."""
    copy = weights_pb2.WeightManifest()
    copy.CopyFrom(manifest)
    copy.ClearField("relay")
    if plan is not None:
        copy.relay.CopyFrom(plan)
    return weights_pb2.WeightUpdateMessage(manifest=copy).SerializeToString()


def same_version(a: weights_pb2.WeightManifest, b: weights_pb2.WeightManifest) -> bool:
    """Whether two manifests describe the same bytes (relay plans aside)."""
    return (
        a.run_id == b.run_id
        and a.version == b.version
        and a.num_chunks == b.num_chunks
        and list(a.tensors) == list(b.tensors)
    )
