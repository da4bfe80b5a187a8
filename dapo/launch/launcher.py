"""`dapo run` and `dapo up`: every service as a local process, without Docker.

`dapo run CONFIG [key=value ...]` uses $REDIS_URL (or services.redis_url) if set, else starts a private
redis-server; starts the reward service, the rollout server(s), the trainer and the controller;
submits the run over REST; shows progress; writes metrics (JSONL, TensorBoard, a PNG) under
`logger.log_dir/<run id>/` (W&B, if enabled, is logged live by the controller, into the same folder);
restarts a service that dies (a bounded number of times, as compose's restart policy would); exits with
the run's outcome (0 only if it succeeded) and stops everything it started, also on Ctrl-C.
`dapo up [CONFIG]` starts the services only. With $DAPO_CONTROLLER_URL set (deploy/slurm/dapo.sub sets
it) `dapo run` starts nothing: it submits the run to that controller, follows it and writes its outputs
the same way.

Every service binds 127.0.0.1 and is authenticated: the launcher uses $DAPO_SERVICE_TOKEN or makes a random
token per launch, and gives its private Redis $DAPO_REDIS_PASSWORD or a random password; both reach the
services through their environment (REDIS_URL, DAPO_SERVICE_TOKEN), never their command lines.

Each service starts as `dapo SERVICE --settings FILE`: its settings model, built from the run config
(dapo.launch.services), written beside its log without secrets. On CPU the rollout servers run niced
(see dapo.launch.services) and, with cluster.cpu_affinity_enabled, on CPU sets apart from the trainer's
(dapo.launch.cpu_sets).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
import redis
import yaml

from dapo import auth, keys
from dapo.config import ConfigError, RunConfig, load_config
from dapo.launch.cpu_sets import CpuPlan, plan_cpu_sets
from dapo.launch.service_process import ServiceProcess
from dapo.launch.services import (
    ROLLOUT_CPU_NICE,
    check_layout,
    check_model,
    check_wandb,
    controller_settings,
    gpu_split,
    reward_settings,
    rollout_settings,
    trainer_settings,
)
from dapo.local_redis import RedisServer, free_port
from dapo.records import event_entry, is_terminal
from dapo.service_settings import ServiceSettings, write_settings

RECORD_GONE_GRACE_S = 60.0
"""How long `follow` waits for the controller to write back the record of a run Redis lost."""
CONTROLLER_URL_ENV = "DAPO_CONTROLLER_URL"
"""Set (by deploy/slurm/dapo.sub): `dapo run` starts nothing and submits the run to this controller."""
ATTACH_READY_TIMEOUT_S = 300.0


class Launcher:
    def __init__(self, config: RunConfig, work_dir: Path, config_dict: dict[str, Any]) -> None:
        self.config = config
        self.config_dict = config_dict
        self.work_dir = work_dir
        self.redis_server: RedisServer | None = None
        self.services: list[ServiceProcess] = []
        self.cpu_plan = CpuPlan(None, None, None, "services not started")
        # Guards `services` and each service's restart: supervise() runs in the launcher's thread while
        # another (an operator's tool, the fault tests) may kill or drop a service.
        self._services_lock = threading.RLock()
        self.redis_url = os.environ.get("REDIS_URL") or config.services.redis_url
        self.run_id: str | None = None
        self._missing_since: float | None = None
        configured_token = auth.service_token()
        self.service_token = configured_token or auth.new_token()
        # A configured token (variable or file) reaches the services as it is; a new one is added.
        self.token_env = {} if configured_token else {auth.SERVICE_TOKEN: self.service_token}
        tls = auth.tls_files()
        self.scheme = "https" if tls is not None else "http"
        api_token = auth.api_token()
        self.http = httpx.Client(
            headers={"Authorization": f"Bearer {api_token}"} if api_token else None,
            verify=auth.http_verify(),
        )

    # --- services ----------------------------------------------------------------------------------

    def start(self, *, with_controller: bool = True) -> None:
        """Start Redis (unless given) and every service the config gives no address for.

        Without the controller, the rest serve the runs of controllers started elsewhere (each
        `dapo run` given their addresses through services.* and $REDIS_URL starts only its own).
        """
        cfg = self.config
        if not self.redis_url:
            password = auth.redis_password() or auth.new_token()
            self.redis_server = RedisServer(appendonly=True, password=password)
            self.redis_url = self.redis_server.url
        # Secrets travel in the environment: a command line is visible to every local user.
        secret_env = {"REDIS_URL": self.redis_url, **self.token_env}
        self.rollout_gpus, self.trainer_gpus = gpu_split(cfg)
        self.trainer_ranks = cfg.cluster.trainer_processes_per_node or max(1, len(self.trainer_gpus))
        self.cpu_plan = plan_cpu_sets(cfg, trainer_ranks=self.trainer_ranks)
        print(f"[dapo] {self.cpu_plan.message}", file=sys.stderr)
        logs = self.work_dir / "services"
        py = [sys.executable, "-m", "dapo.cli"]
        self.reward_address = cfg.services.reward_address
        if not self.reward_address:
            self.services.append(self._reward_service(logs, py))
        self.weights_address = cfg.services.weights_address or f"127.0.0.1:{free_port()}"
        self.rollout_addresses = list(cfg.services.rollout_addresses)
        if not self.rollout_addresses:
            self.services.extend(
                self._rollout_service(logs, py, i) for i in range(cfg.cluster.num_rollout_servers)
            )
        if not cfg.services.weights_address:
            self.services.append(self._trainer_service(logs, py))
        self.controller_port = free_port()
        self.controller_url = f"{self.scheme}://127.0.0.1:{self.controller_port}"
        if with_controller:
            self.services.append(self._controller_service(logs, py))
        for service in self.services:
            service.env = {**secret_env, **service.env}
            service.start()
        if with_controller:
            self._wait_ready()

    @staticmethod
    def _service_args(command: str, name: str, settings: ServiceSettings, logs: Path) -> list[str]:
        """`COMMAND --settings FILE` (after `dapo`), the file `NAME.settings.json` beside the logs."""
        return [command, "--settings", str(write_settings(settings, logs / f"{name}.settings.json"))]

    def _reward_service(self, logs: Path, py: list[str]) -> ServiceProcess:
        port = free_port()
        self.reward_address = f"127.0.0.1:{port}"
        settings = reward_settings(self.config, "127.0.0.1", port, free_port())
        return ServiceProcess(
            "reward",
            [*py, *self._service_args("reward", "reward", settings, logs)],
            logs / "reward.log",
            env=self.cpu_plan.threads(self.cpu_plan.shared),
            cpus=self.cpu_plan.shared,
        )

    def _rollout_service(self, logs: Path, py: list[str], index: int) -> ServiceProcess:
        port = free_port()
        self.rollout_addresses.append(f"127.0.0.1:{port}")
        settings = rollout_settings(self.config, index, "127.0.0.1", port, free_port(), self.weights_address)
        env = {
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            **self.cpu_plan.threads(self.cpu_plan.rollout),
        }
        gpus = self.rollout_gpus[index]
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        name = f"rollout-{index}"
        return ServiceProcess(
            name,
            [*py, *self._service_args("rollout", name, settings, logs)],
            logs / f"{name}.log",
            env=env,
            nice=0 if gpus else ROLLOUT_CPU_NICE,
            cpus=self.cpu_plan.rollout,
        )

    def _trainer_service(self, logs: Path, py: list[str]) -> ServiceProcess:
        assert self.redis_url is not None  # set by start()
        publisher_port = int(self.weights_address.rsplit(":", 1)[1])
        settings = trainer_settings(self.config, self.redis_url, "127.0.0.1", publisher_port, free_port())
        trainer = self._service_args("trainer", "trainer", settings, logs)
        nproc = self.trainer_ranks
        cmd = [*py, *trainer]
        if nproc > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
            cmd = [*torchrun, f"--master_port={free_port()}", "-m", "dapo.cli", *trainer]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.trainer_gpus)} if self.trainer_gpus else {}
        env.update(self.cpu_plan.threads(self.cpu_plan.trainer, nproc))
        return ServiceProcess("trainer", cmd, logs / "trainer.log", env=env, cpus=self.cpu_plan.trainer)

    def _controller_service(self, logs: Path, py: list[str]) -> ServiceProcess:
        assert self.redis_url is not None and self.reward_address is not None  # set by start()
        settings = controller_settings(
            self.config,
            self.redis_url,
            "127.0.0.1",
            self.controller_port,
            self.rollout_addresses,
            self.reward_address,
        )
        return ServiceProcess(
            "controller",
            [*py, *self._service_args("controller", "controller", settings, logs)],
            logs / "controller.log",
            env=self.cpu_plan.threads(self.cpu_plan.shared),
            cpus=self.cpu_plan.shared,
        )

    def _wait_ready(self, timeout_s: float = 60.0, logs: str | None = None) -> None:
        """Return once the controller's /readyz answers 200; RuntimeError after `timeout_s` with its last
        answer (no connection, or why it is not ready) and where its log is (`logs`, default ours)."""
        deadline = time.monotonic() + timeout_s
        last = "none"
        while time.monotonic() < deadline:
            self.supervise()
            try:
                reply = self.http.get(f"{self.controller_url}/readyz", timeout=2)
                if reply.status_code == 200:
                    return
                last = f"HTTP {reply.status_code} {reply.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise RuntimeError(
            f"the controller at {self.controller_url} did not become ready in {timeout_s:.0f} s "
            f"(its last answer: {last}); see {logs or self.work_dir / 'services'}"
        )

    def supervise(self) -> None:
        """Restart services that died, within their budget; record it as a run event."""
        with self._services_lock:
            for service in list(self.services):
                code = service.exit_code()
                if code is None:
                    continue
                if service.restarts >= service.max_restarts:
                    raise RuntimeError(
                        f"service {service.name} exited with code {code} and was restarted "
                        f"{service.restarts} times already; its log ends with:\n{service.tail()}"
                    )
                service.restarts += 1
                self._event(
                    "service_restart",
                    f"{service.name} exited with code {code}; restarting "
                    f"({service.restarts}/{service.max_restarts})",
                )
                service.start()

    def service(self, name: str) -> ServiceProcess:
        """The supervised service called `name` (KeyError naming the ones there are)."""
        with self._services_lock:
            for service in self.services:
                if service.name == name:
                    return service
            raise KeyError(f"no service '{name}'; running: {', '.join(s.name for s in self.services)}")

    def kill(self, name: str, sig: int = signal.SIGKILL, *, restart: bool = True) -> subprocess.Popen[bytes]:
        """Send `sig` to service `name`'s process group; returns the process signalled.

        With `restart=False` the service is first dropped from supervision, so it stays down (and
        `stop()` no longer waits for it). Atomic with respect to supervise(): the process signalled is
        the one running now, and a dropped service is never restarted.
        """
        with self._services_lock:
            service = self.service(name)
            process = service.process
            if process is None:
                raise RuntimeError(f"service {name} was never started")
            if not restart:
                self.services.remove(service)
            os.killpg(process.pid, sig)
        return process

    def _event(self, kind: str, message: str) -> None:
        print(f"[dapo] {message}", file=sys.stderr)
        if self.run_id is None or self.redis_url is None:
            return
        client = redis.Redis.from_url(self.redis_url, **auth.redis_options(self.redis_url))
        try:
            client.xadd(
                keys.events_stream(self.run_id),
                event_entry(kind, message),
                maxlen=self.config.services.redis_events_maxlen,
                approximate=False,
            )
        finally:
            client.close()

    def stop(self) -> None:
        # The controller first (it stops driving), then the workers, then Redis.
        with self._services_lock:
            services = list(self.services)
        for service in reversed(services):
            service.stop()
        if self.redis_server is not None:
            self.redis_server.stop()

    # --- one run -----------------------------------------------------------------------------------

    def submit(self) -> str:
        reply = self.http.post(
            f"{self.controller_url}/v1/runs", json={"config": self.config_dict}, timeout=30
        )
        if reply.status_code != 201:
            raise RuntimeError(f"the controller refused the run ({reply.status_code}): {reply.text}")
        self.run_id = str(reply.json()["id"])
        return self.run_id

    def request_stop(self) -> None:
        if self.run_id is not None:
            self.http.post(f"{self.controller_url}/v1/runs/{self.run_id}/stop", timeout=10)

    def follow(self) -> dict[str, Any]:
        """Show progress until the run ends; return its final record."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        assert self.run_id is not None
        total = self.config.grpo.max_num_steps
        self.records: list[dict[str, Any]] = []
        latest: dict[str, Any] = {}
        columns = [
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("run", total=total, info="starting services")
            answered = time.monotonic()
            while True:
                self.supervise()
                try:
                    run = self._get_run()
                    # From the trainer's last step: in an asynchronous run the controller's records run ahead.
                    since = max(
                        (int(r["step"]) for r in self.records if r.get("source") == "trainer"), default=0
                    )
                    new = self.http.get(
                        f"{self.controller_url}/v1/runs/{self.run_id}/metrics",
                        params={"since": since},
                        timeout=10,
                    ).json()
                except httpx.TransportError:  # the controller is restarting; supervise() watches it
                    silent_s = time.monotonic() - answered
                    if silent_s > self.config.services.redis_timeout_s + 60:
                        raise RuntimeError(
                            f"the controller has not answered for {silent_s:.0f} s (Redis down longer than "
                            f"services.redis_timeout_s?); see {self.work_dir / 'services'}"
                        ) from None
                    time.sleep(1.0)
                    continue
                answered = time.monotonic()
                self._add_records(new, since, latest)
                done = sum(1 for r in self.records if r.get("source") == "trainer")
                progress.update(
                    task, completed=min(done, total), info=self._progress_info(latest, run["status"])
                )
                if is_terminal(run["status"]):
                    return run
                time.sleep(1.0)

    def _add_records(self, new: list[dict[str, Any]], since: int, latest: dict[str, Any]) -> None:
        """Append the records of `new` not already held (those from step `since` on may repeat)."""
        seen = {json.dumps(r, sort_keys=True) for r in self.records if int(r["step"]) >= since}
        for record in new:
            if json.dumps(record, sort_keys=True) not in seen:
                self.records.append(record)
                latest.update(record)

    @staticmethod
    def _progress_info(latest: dict[str, Any], status: str) -> str:
        """The progress bar's text: the latest reward, validation accuracy and generation speed, else the status."""
        return (
            " ".join(
                f"{label} {latest[key]:.3g}"
                for key, label in (
                    ("train/reward", "reward"),
                    ("val/accuracy", "val acc"),
                    ("gen/tokens_per_s", "tok/s"),
                )
                if isinstance(latest.get(key), int | float)
            )
            or status
        )

    def _get_run(self) -> dict[str, Any]:
        """The run's record; a 5xx (Redis restarting behind the controller) reads as a transport error."""
        reply = self.http.get(f"{self.controller_url}/v1/runs/{self.run_id}", timeout=10)
        if reply.status_code == 404:
            # Redis lost the record: the controller's loop writes it back as failed, with the reason, as
            # soon as it notices; wait a while for that before saying so without it.
            now = time.monotonic()
            self._missing_since = self._missing_since or now
            if now - self._missing_since < RECORD_GONE_GRACE_S:
                raise httpx.TransportError(f"run {self.run_id} has no record (yet)")
            raise RuntimeError(
                f"run {self.run_id} is gone from Redis: Redis lost its state (restarted without persistence?)"
            )
        self._missing_since = None
        if reply.status_code >= 500:
            raise httpx.TransportError(f"the controller answered {reply.status_code}")
        reply.raise_for_status()
        return dict(reply.json())

    def write_outputs(self, run: dict[str, Any]) -> Path:
        from dapo_controller.reporting import (
            merge_by_step,
            plot_run,
            write_jsonl,
            write_tensorboard,
        )

        out = Path(self.config.logger.log_dir) / str(self.run_id)
        rows = merge_by_step(self.records)
        write_jsonl(rows, out / "metrics.jsonl")
        (out / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        if self.config.logger.tensorboard_enabled:
            write_tensorboard(rows, out / "tensorboard")
        plot_run(rows, out / "run.png", title=f"run {self.run_id}: {run['status']}")
        return out


def _summary(records: list[dict[str, Any]]) -> str:
    val = [r for r in records if "val/accuracy" in r]
    if len(val) < 1:
        return "no validation ran"
    first, last = val[0], val[-1]
    return (
        f"validation accuracy: {first['val/accuracy']:.1%} at step {first['step']} -> "
        f"{last['val/accuracy']:.1%} at step {last['step']} "
        f"({(last['val/accuracy'] - first['val/accuracy']) * 100:+.1f} points)"
    )


def checked_config(config_path: str | None, overrides: list[str], attached: str | None) -> RunConfig:
    """The run config, and (unless the services run elsewhere) whether this node can lay it out;
    ConfigError naming the key otherwise."""
    config = load_config(config_path, overrides)
    if not attached:
        check_layout(config)
        check_model(config)
        check_wandb(config)
        gpu_split(config)
        plan_cpu_sets(config)
    return config


def serve_forever(launcher: Launcher) -> NoReturn:
    """`dapo up`: say where everything is, then supervise the services until interrupted."""
    print(
        f"controller {launcher.controller_url}  reward {launcher.reward_address}  "
        f"rollout {','.join(launcher.rollout_addresses)}  weights {launcher.weights_address}  "
        f"redis {auth.redact_url(launcher.redis_url or '')}\nlogs in {launcher.work_dir}; Ctrl-C stops everything"
    )
    while True:
        launcher.supervise()
        time.sleep(1.0)


def run_once(launcher: Launcher, attached: str | None) -> int:
    """`dapo run`: submit the run, follow it, write its outputs; 0 only if it succeeded uninterrupted."""
    run_id = launcher.submit()
    where = "" if attached else f" (logs: {launcher.work_dir})"
    print(f"run {run_id} submitted to {launcher.controller_url}{where}")
    interrupted = False
    try:
        run = launcher.follow()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the run", file=sys.stderr)
        launcher.request_stop()
        run = launcher.http.get(f"{launcher.controller_url}/v1/runs/{run_id}", timeout=10).json()
    out = launcher.write_outputs(run)
    print(f"run {run_id} {run['status']}" + (f": {run['error']}" if run.get("error") else ""))
    print(_summary(launcher.records))
    print(f"metrics, TensorBoard events and plot in {out}")
    return 0 if run["status"] == "succeeded" and not interrupted else 1


def launch(mode: str, config_path: str | None, overrides: list[str]) -> int:
    """`dapo run` (mode "run") or `dapo up` (mode "up"): its exit status (see the module docstring)."""
    # Under deploy/slurm/dapo.sub the services run already, over the job's nodes: submit to them.
    attached = os.environ.get(CONTROLLER_URL_ENV) if mode == "run" else None
    try:
        config = checked_config(config_path, overrides, attached)
    except ConfigError as exc:
        print(f"dapo {mode}: {exc}", file=sys.stderr)
        return 2
    work_dir = Path(config.logger.log_dir) / (
        "services" if mode == "up" else time.strftime("launch-%Y%m%d-%H%M%S")
    )
    launcher = Launcher(config, work_dir, config.model_dump(mode="json"))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if attached:
            launcher.controller_url = attached.rstrip("/")
            launcher._wait_ready(
                ATTACH_READY_TIMEOUT_S, logs="the controller's log (under Slurm: the job folder)"
            )
        else:
            launcher.start()
        if mode == "up":
            serve_forever(launcher)
        return run_once(launcher, attached)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"dapo {mode}: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave services running (each
        # service gets its grace period, then SIGKILL, so this cannot hang).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        launcher.stop()
