"""The controller's channel to the reward service, spreading Score calls over every reward server.

The address is any gRPC target: `host:port` (local runs, compose), `dns:///name:port` for a headless
Service whose name resolves to every ready pod (the Helm chart), or `ipv4:a:p,b:q` for a fixed list.
gRPC's own resolver turns it into addresses and the `round_robin` load-balancing policy sends each call
to the next one (gRPC's default, `pick_first`, would send every call to one pod). A failed server is
skipped until it reconnects. gRPC resolves the name again whenever a connection closes, and the reward
server closes each connection after `dapo_reward.grpc_server.MAX_CONNECTION_AGE_S`, so pods an autoscaler
adds start taking calls within that time.
"""

from __future__ import annotations

import json

import grpc

from dapo import rpc

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def reward_channel(address: str) -> grpc.aio.Channel:
    return rpc.aio_channel(address, options=[("grpc.service_config", ROUND_ROBIN)])
