#!/usr/bin/env bash
# Stand-ins for the public base images, built from Debian packages, for machines that reach no image
# registry (air-gapped sites, CI without Docker Hub). Builds, unless already present:
#   dapo-offline/python:3.11      Debian bookworm (python3 3.11, venv, ca-certificates)  ~ python:3.11-slim
#   dapo-offline/redis:7          redis-server from Debian on that base                  ~ redis:7.2
#   dapo-offline/prometheus:2     prometheus from Debian on that base                    ~ prom/prometheus
# and prints the `export NAME=value` lines that make docker compose use them:
#   eval "$(bash scripts/offline-images.sh)"
# Nothing else differs from a build with the public images. Needs root (debootstrap) and a Docker
# engine. Progress goes to stderr; only the export lines go to stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
docker="${DOCKER:-docker}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python_image=dapo-offline/python:3.11
redis_image=dapo-offline/redis:7
prometheus_image=dapo-offline/prometheus:2

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
say() { echo "offline-images: $*" >&2; }

if ! have "$python_image"; then
  command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap bookworm into $rootfs (about 2 minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$python_image" >&2
  rm -rf "$rootfs"
  trap - EXIT
fi
for name in redis prometheus; do
  image_var="${name}_image"
  if ! have "${!image_var}"; then
    say "building ${!image_var}"
    DOCKER_BUILDKIT=0 "$docker" build -q -t "${!image_var}" --build-arg BASE_IMAGE="$python_image" \
      -f "docker/offline/$name.Dockerfile" docker/offline >&2
  fi
done
cat <<VARS
export DAPO_PYTHON_IMAGE=$python_image
export DAPO_REDIS_IMAGE=$redis_image
export DAPO_PROMETHEUS_IMAGE=$prometheus_image
VARS
# The CPU torch wheel: PyTorch's CPU index is a registry too. Where this machine's pip has the wheel in
# a local folder, put it in the build context's wheels folder (a bind mount, not copied into the image).
py="${PYTHON:-python3}"
links="${PIP_FIND_LINKS:-$("$py" -m pip config get global.find-links 2>/dev/null || true)}"
for dir in $links; do
  for wheel in "${dir#file://}"/torch-2.13.0+cpu-*.whl; do
    [ -f "$wheel" ] || continue
    [ -f "docker/wheels/${wheel##*/}" ] || cp "$wheel" docker/wheels/
    say "torch CPU wheel: docker/wheels/${wheel##*/}"
    echo "export DAPO_TORCH_INDEX_URL="
    break 2
  done
done
# pip's CA bundle (a TLS-intercepting proxy's), passed to image builds as the pip_ca build secret.
cert="${PIP_CERT:-$("$py" -m pip config get global.cert 2>/dev/null || true)}"
[ -z "$cert" ] || echo "export DAPO_PIP_CA=$cert"
