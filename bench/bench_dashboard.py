"""How long the dashboard's run page takes to load and draw a 1,000-step run in headless Chromium.

A real controller app (no run loop) on a private Redis holds one run with `--steps` steps, each written
through the app's `RunStore` as the loop and the trainer write them (two metric records a step, a
validation record every 10 steps). Each load navigates from about:blank to `/#/runs/<id>`; the time is
from navigation start to `window.__dashboardDrawnAt`, which the page sets once the run and its whole
metric history are fetched and every chart is drawn. Prints the loads and their median.

    .venv/bin/python bench/bench_dashboard.py [--steps 1000] [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def step_records(step: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {
            "step": step,
            "source": "controller",
            "train/reward": 0.3 + 0.6 * step / (step + 100),
            "train/accuracy": 0.3 + 0.6 * step / (step + 120),
            "train/response_length": 4.0 + (step % 7) * 0.1,
            "train/truncated_frac": 0.0,
            "train/groups_kept_frac": 0.6 + (step % 5) * 0.05,
            "train/staleness": float(step % 2),
            "gen/tokens_per_s": 1000.0 + step % 50,
            "time/generate": 0.5,
            "time/reward": 0.1,
            "time/wait_trainer": 0.05,
        },
        {
            "step": step,
            "source": "trainer",
            "train/loss": 0.01,
            "train/entropy": 1.0 - step / 2000,
            "train/clip_high_frac": 0.01,
            "train/clip_low_frac": 0.005,
            "train/dual_clip_frac": 0.0,
            "train/grad_norm": 0.5,
            "train/tokens_per_s": 2000.0,
            "time/forward": 0.1,
            "time/backward": 0.2,
            "time/optimizer": 0.03,
            "time/gather": 0.01,
            "time/publish": 0.02,
        },
    ]
    if step % 10 == 0:
        records.append({"step": step, "source": "validation", "val/accuracy": 0.3 + step / 2000})
    return records


def serve(app: Any) -> tuple[str, asyncio.AbstractEventLoop, Any, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    loop = asyncio.new_event_loop()

    def run() -> None:
        loop.run_until_complete(server.serve(sockets=[sock]))
        pending = asyncio.all_tasks(loop)  # sse-starlette's shutdown watchers
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the controller app failed to start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", loop, server, thread


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        print("needs chromium and chromedriver: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2

    from dapo_controller.app import create_app
    from dapo_controller.settings import ControllerSettings
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from dapo.config import parse_config
    from dapo.local_redis import RedisServer

    redis = RedisServer()
    app = create_app(ControllerSettings(redis_url=redis.url, run_loop=False))
    url, loop, server, thread = serve(app)

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    store = app.state.store
    run = call(store.create_run(parse_config({"policy": {"model_name": "bench-model"}}), "bench"))
    t0 = time.perf_counter()
    for step in range(args.steps):
        for record in step_records(step):
            call(store.add_metrics(run.id, record))
    call(store.update_run(run.id, status="running", started_at=time.time(), step=args.steps))
    write_s = time.perf_counter() - t0
    num_records = len(call(store.read_metrics(run.id)))

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.TemporaryDirectory(prefix="bench-dashboard-")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    times_ms: list[float] = []
    try:
        for i in range(args.loads + 1):  # the first load warms the browser's caches and is not counted
            driver.get("about:blank")
            driver.get(f"{url}/#/runs/{run.id}")
            drawn = WebDriverWait(driver, 30, poll_frequency=0.02).until(
                lambda d: d.execute_script("return window.__dashboardDrawnAt")
            )
            points = driver.execute_script(
                "return document.querySelector('[data-chart=reward] polyline[data-series=reward]')"
                ".points.numberOfItems"
            )
            assert points == args.steps, f"reward chart has {points} points, expected {args.steps}"
            if i:
                times_ms.append(float(drawn))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
        redis.stop()
        profile.cleanup()

    print(f"run with {args.steps} steps: {num_records} metric records (written in {write_s:.1f} s)")
    print("loads (ms, navigation start to charts drawn): " + ", ".join(f"{t:.0f}" for t in times_ms))
    print(f"median {statistics.median(times_ms):.0f} ms, min {min(times_ms):.0f}, max {max(times_ms):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
