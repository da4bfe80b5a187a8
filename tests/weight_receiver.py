"""A rollout server without vLLM, for fan-out tests and the fan-out benchmark: the real gRPC server
(`RolloutServicer`, `build_server`), the real `WeightUpdater` (staging, relaying, resuming, verifying),
and in place of the engine a stand-in whose "apply" records the verified version.

    python -m tests.weight_receiver --port P --specs SPECS.json --weights-address HOST:PORT
        [--staging-root DIR] [--record-dir DIR] [--release-staging] [--pace-s S] [--die-after N]

SPECS.json maps each tensor name to [dtype, shape]. With --record-dir, every applied version is written
there as applied-<port>.json (version, run id, and the CRC-32 of each tensor read back from the staged
file: an independent check of what was staged). --release-staging deletes the staging file once a version
is applied (the benchmark's 32 receivers then hold no 0.5 GB file each between versions).
Prints "READY <port>" once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Options:
    model: str = "weights-only"


class StagingOnlyEngine:
    """What `RolloutServicer` and `WeightUpdater` need from an engine; applying records the version."""

    def __init__(self, record_dir: Path | None, port: int) -> None:
        self.version = -1
        self.run_id = ""
        self.options = _Options()
        self.num_in_flight = 0
        self.is_errored = False
        self.record_dir = record_dir
        self.port = port
        self.on_applied: list = []

    @property
    def is_ready(self) -> bool:
        return self.version >= 0

    async def apply_weights(self, version: int, weights_dir: str, run_id: str = "") -> None:
        if self.record_dir is not None:
            from dapo_rollout.weight_update import STAGED_FILE

            from dapo.safetensors_header import read_header

            path = Path(weights_dir) / STAGED_FILE
            header, start = read_header(path)
            data = path.read_bytes()
            crcs = {
                name: zlib.crc32(data[start + entry["data_offsets"][0] : start + entry["data_offsets"][1]])
                for name, entry in header.items()
                if name != "__metadata__"
            }
            usage = resource.getrusage(resource.RUSAGE_SELF)
            record = {
                "version": version,
                "run_id": run_id,
                "crc32": crcs,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "pid": os.getpid(),
            }
            tmp = self.record_dir / f".applied-{self.port}.json"
            tmp.write_text(json.dumps(record))
            tmp.rename(self.record_dir / f"applied-{self.port}.json")
        self.version, self.run_id = version, run_id
        for callback in self.on_applied:
            callback()


def _paced_servicer(base: type, pace_s: float, progress_path: Path, die_after: int = 0) -> type:
    """The servicer, taking the incoming update messages at most one per `pace_s` (0: as they come) and
    writing how many it took to `progress_path`: a test can kill this server in the middle of a relay.
    With `die_after`, the process SIGKILLs itself once it has taken that many messages (1: the manifest,
    before it relays anything)."""
    if not pace_s and not die_after:
        return base

    class Paced(base):  # type: ignore[misc, valid-type]
        async def UpdateWeights(self, request_iterator, context):  # noqa: ANN001, N802
            async def paced():
                count = 0
                async for item in request_iterator:
                    if pace_s:
                        await asyncio.sleep(pace_s)
                    count += 1
                    progress_path.write_text(str(count))
                    if count == die_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield item

            return await super().UpdateWeights(paced(), context)

    return Paced


async def serve(args: argparse.Namespace) -> None:
    from dapo_rollout.grpc_server import RolloutServicer, build_server
    from dapo_rollout.metrics import RolloutMetrics
    from dapo_rollout.weight_update import WeightUpdater
    from grpc_health.v1.health import aio as health_aio

    specs = {
        name: (dtype, tuple(shape))
        for name, (dtype, shape) in json.loads(Path(args.specs).read_text()).items()
    }
    engine = StagingOnlyEngine(Path(args.record_dir) if args.record_dir else None, args.port)
    updater = WeightUpdater(engine, specs, args.staging_root, None, args.weights_address)  # type: ignore[arg-type]
    if args.release_staging:
        engine.on_applied.append(updater.staging.close)  # reopened by the next update
    servicer_class = _paced_servicer(
        RolloutServicer, args.pace_s, Path(args.record_dir or ".") / f"progress-{args.port}", args.die_after
    )
    servicer = servicer_class(engine, updater, RolloutMetrics(), health_aio.HealthServicer())  # type: ignore[arg-type]
    follower = None
    if args.poll_s and args.weights_address:
        from dapo_rollout.follower import PublisherFollower

        follower = asyncio.ensure_future(
            PublisherFollower(
                args.weights_address, updater, poll_s=args.poll_s, on_update=servicer.refresh_health
            ).run()
        )
    server, port = build_server(servicer, f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port}", flush=True)
    try:
        await stop.wait()
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await server.stop(1.0)
        await updater.close()


class Receivers:
    """N receiver processes on loopback (each on a free port), started in parallel."""

    def __init__(
        self,
        num: int,
        specs: dict[str, tuple[str, tuple[int, ...]]],
        workdir: Path,
        weights_address: str | None,
        *,
        staging_root: Path | None = None,
        is_recording: bool = True,
        release_staging: bool = False,
        extra_args: dict[int, list[str]] | None = None,
    ) -> None:
        import subprocess
        import sys

        from dapo.local_redis import free_port

        self.workdir = workdir
        self.record_dir = workdir / "applied"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        specs_path = workdir / "specs.json"
        specs_path.write_text(json.dumps({k: [d, list(s)] for k, (d, s) in specs.items()}))
        self.ports = [free_port() for _ in range(num)]
        self.processes: list[subprocess.Popen] = []
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), str(root / "services" / "rollout"), env.get("PYTHONPATH", "")]
        )
        for port in self.ports:
            args = [
                sys.executable,
                "-m",
                "tests.weight_receiver",
                "--port",
                str(port),
                "--specs",
                str(specs_path),
            ]
            if weights_address:
                args += ["--weights-address", weights_address]
            if staging_root is not None:
                args += ["--staging-root", str(staging_root)]
            if is_recording:
                args += ["--record-dir", str(self.record_dir)]
            if release_staging:
                args.append("--release-staging")
            args += (extra_args or {}).get(len(self.processes), [])
            log = open(workdir / f"receiver-{port}.log", "wb")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
            )
            log.close()

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        for port, process in zip(self.ports, self.processes, strict=True):
            path = self.workdir / f"receiver-{port}.log"
            while b"READY" not in path.read_bytes():
                if process.poll() is not None:
                    raise RuntimeError(f"receiver {port} exited: {path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"receiver {port} not ready in {timeout} s")
                time.sleep(0.05)

    def applied(self) -> dict[str, dict]:
        """What each receiver applied last, by address (absent: nothing applied yet)."""
        out = {}
        for port in self.ports:
            path = self.record_dir / f"applied-{port}.json"
            if path.exists():
                out[f"127.0.0.1:{port}"] = json.loads(path.read_text())
        return out

    def progress(self, index: int) -> int:
        """How many update messages paced receiver `index` has taken (0 before any)."""
        path = self.record_dir / f"progress-{self.ports[index]}"
        text = path.read_text() if path.exists() else ""
        return int(text) if text.strip() else 0

    def log_of(self, index: int) -> str:
        return (self.workdir / f"receiver-{self.ports[index]}.log").read_text(errors="replace")

    def cpu_seconds(self, index: int) -> float:
        """User + system CPU time of receiver `index` so far (from /proc)."""
        fields = Path(f"/proc/{self.processes[index].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except Exception:
                process.kill()
                process.wait()

    def __enter__(self) -> Receivers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--specs", required=True)
    p.add_argument("--weights-address", default=None)
    p.add_argument("--staging-root", default=None)
    p.add_argument("--record-dir", default=None)
    p.add_argument("--release-staging", action="store_true")
    p.add_argument(
        "--poll-s", type=float, default=0.0, help="follow the publisher every this many s (0: off)"
    )
    p.add_argument("--pace-s", type=float, default=0.0, help="take one update message per this many s")
    p.add_argument("--die-after", type=int, default=0, help="SIGKILL itself after taking this many messages")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
