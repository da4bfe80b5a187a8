#!/usr/bin/env bash
# Regenerates the Python gRPC stubs in dapo/v1 from proto/dapo/v1/*.proto.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
"${PYTHON:-python3}" -m grpc_tools.protoc -I "$root/proto" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/proto/dapo/v1/*.proto
