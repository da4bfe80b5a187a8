"""The dashboard in a real headless Chromium, against the real controller app and a real Redis.

The controller runs without its run loop (no rollout, reward or trainer services): the test plays the
loop's part by writing the run's status, metrics and events through the app's own `RunStore`, the way
the loop does. The page, the REST API and the event stream are the shipped ones. Screenshots go to
`test-artifacts/dashboard/`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_module, require_tool

BROWSER_WHY = "scripts/install.sh installs Debian's chromium and chromium-driver"
webdriver = require_module("selenium.webdriver", "the dev extra installs selenium")

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
WAIT_S = 10.0

VALID_CONFIG = """\
policy:
  model_name: tiny-test-model
grpo:
  max_num_steps: 5
"""

# A typo in a key: the config schema forbids unknown keys, and the API names the field.
INVALID_CONFIG = """\
policy:
  model_name: tiny-test-model
grpo:
  ratio_clip_mx: 0.3
"""


class ServedApp:
    """The controller app served by uvicorn on a free loopback port, in a background thread.

    `call` runs a coroutine on the server's event loop (the store's Redis client belongs to it).
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="dashboard-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self._server.started:
            assert self._thread.is_alive(), "the controller app failed to start"
            assert time.monotonic() < deadline, "the controller app did not start in time"
            time.sleep(0.02)

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        # sse-starlette leaves a shutdown watcher per stream; end them before closing the loop.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=WAIT_S)

    @property
    def store(self) -> Any:
        return self.app.state.store

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=WAIT_S)
        self._sock.close()


def serve_controller(redis_url: str, api_token: str | None = None) -> ServedApp:
    from dapo_controller.app import create_app
    from dapo_controller.settings import ControllerSettings

    return ServedApp(create_app(ControllerSettings(redis_url=redis_url, api_token=api_token, run_loop=False)))


@pytest.fixture
def controller(redis_server: Any, browser: Any) -> Iterator[ServedApp]:
    served = serve_controller(redis_server.url)
    yield served
    browser.get("about:blank")  # close the page's event stream before the server stops
    served.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    chromium = require_tool("chromium", BROWSER_WHY, "chromium-browser")
    chromedriver = require_tool("chromedriver", BROWSER_WHY)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
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
        # No network but loopback: any attempt to reach another host fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(WAIT_S * 3)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    try:
        # The page re-renders its lists as events arrive: an element found a moment ago may be gone, so
        # a condition that meets a stale element is tried again, not failed.
        return WebDriverWait(
            driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        screenshot(driver, "timeout")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def screenshot(driver: Any, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(1000, min(int(height) + 120, 4000)))
    driver.save_screenshot(str(path))
    if full_page:
        driver.set_window_size(1400, 1000)
    return path


def open_dashboard(driver: Any, url: str) -> None:
    driver.get("about:blank")
    driver.get(url + "/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-body tr"), "the runs list")


def paste_config(driver: Any, text: str) -> None:
    toggle = driver.find_element(By.ID, "new-run-toggle")
    if not driver.find_element(By.ID, "new-run").get_attribute("open"):
        toggle.click()
    field = driver.find_element(By.ID, "config-yaml")
    field.clear()
    field.send_keys(text)


def status_in_list(driver: Any, run_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#runs-body tr[data-run-id="{run_id}"] .status')
    return rows[0].text if rows else None


def reward_points(driver: Any) -> int:
    return int(
        driver.execute_script(
            "const line = document.querySelector('[data-chart=reward] polyline[data-series=reward]');"
            "return line ? line.points.numberOfItems : 0;"
        )
    )


def metric_records(step: int) -> list[dict[str, Any]]:
    """What the loop and the trainer report for one step (two sources, merged by the page)."""
    return [
        {
            "step": step,
            "source": "controller",
            "train/reward": 0.2 + 0.1 * step,
            "train/accuracy": 0.2 + 0.1 * step,
            "train/response_length": 5.0 + step,
            "train/groups_kept_frac": 0.75,
            "train/staleness": 0.0,
            "gen/tokens_per_s": 900.0 + step,
            "time/generate": 0.5,
            "time/reward": 0.1,
        },
        {
            "step": step,
            "source": "trainer",
            "train/entropy": 1.0 - 0.05 * step,
            "train/clip_high_frac": 0.02,
            "train/clip_low_frac": 0.01,
            "train/dual_clip_frac": 0.0,
            "time/forward": 0.1,
            "time/backward": 0.2,
            "time/optimizer": 0.05,
            "time/gather": 0.01,
            "time/publish": 0.02,
        },
    ]


def add_steps(controller: ServedApp, run_id: str, steps: range) -> None:
    for step in steps:
        for record in metric_records(step):
            controller.call(controller.store.add_metrics(run_id, record))
        controller.call(controller.store.update_run(run_id, policy_version=step + 1))


def test_start_watch_and_stop_a_run(browser: Any, controller: ServedApp) -> None:
    open_dashboard(browser, controller.url)
    paste_config(browser, VALID_CONFIG)
    browser.find_element(By.ID, "run-name").send_keys("browser-test")
    browser.find_element(By.ID, "start-run").click()

    # The new run shows up in the list, pending (nothing drives it yet).
    row = wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-body tr[data-run-id]"), "the run"
    )
    run_id = row[0].get_attribute("data-run-id")
    wait_for(browser, lambda d: status_in_list(d, run_id) == "pending", "status pending in the list")
    assert controller.call(controller.store.get_run(run_id)).status == "pending"
    screenshot(browser, "01-list-pending")

    # Play the loop: the run starts and reports its first steps.
    controller.call(controller.store.update_run(run_id, status="running", started_at=time.time()))
    controller.call(controller.store.add_event(run_id, "started", "run started; waiting for the trainer"))
    wait_for(browser, lambda d: status_in_list(d, run_id) == "running", "status running in the list")

    browser.find_element(By.CSS_SELECTOR, f'#runs-body tr[data-run-id="{run_id}"] a').click()
    wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "h1 .status-running"), "the run page, running"
    )
    browser.execute_script("window.__notReloaded = true;")
    add_steps(controller, run_id, range(0, 3))
    wait_for(browser, lambda d: reward_points(d) == 3, "3 reward points")

    # More steps, an event and a validation arrive through the stream: the charts grow in place.
    add_steps(controller, run_id, range(3, 8))
    controller.call(
        controller.store.add_metrics(run_id, {"step": 7, "source": "validation", "val/accuracy": 0.6})
    )
    controller.call(
        controller.store.add_event(run_id, "rollout_lost", "rollout server 127.0.0.1:1: connection refused")
    )
    wait_for(browser, lambda d: reward_points(d) == 8, "8 reward points")
    wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#events li[data-kind="rollout_lost"]'), "event"
    )
    assert browser.execute_script("return window.__notReloaded === true"), "the page reloaded"
    val_points = browser.execute_script(
        "return document.querySelector('[data-chart=reward] polyline[data-series=\"val accuracy\"]')"
        ".points.numberOfItems"
    )
    assert val_points == 1
    for chart in (
        "response_length",
        "entropy",
        "clip",
        "groups_kept",
        "staleness",
        "throughput",
        "step_time",
    ):
        drawn = browser.find_element(By.CSS_SELECTOR, f'[data-chart="{chart}"]').get_attribute("data-points")
        assert int(drawn) > 0, f"chart {chart} drew nothing"
    assert "tiny-test-model" in browser.find_element(By.ID, "resolved-config").text
    screenshot(browser, "02-run-running", full_page=True)

    # Stop: the API flags the running run; the loop (played here) sees the flag and ends the run.
    browser.find_element(By.ID, "stop-run").click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "h1 .status-stopping"), "stop requested")
    assert controller.call(controller.store.get_run(run_id)).stop_requested
    controller.call(controller.store.update_run(run_id, status="stopped", finished_at=time.time()))
    controller.call(controller.store.add_event(run_id, "stopped", "run stopped"))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "h1 .status-stopped"), "status stopped")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#events li[data-kind="stopped"]'), "event")
    assert browser.find_element(By.ID, "stop-run").get_attribute("disabled") is not None
    assert controller.call(controller.store.get_run(run_id)).status == "stopped"
    screenshot(browser, "03-run-stopped")


def test_invalid_config_shows_the_error_on_its_line(browser: Any, controller: ServedApp) -> None:
    open_dashboard(browser, controller.url)
    paste_config(browser, INVALID_CONFIG)
    browser.find_element(By.ID, "start-run").click()

    mark = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".marks .mark"), "the error mark")[0]
    assert mark.get_attribute("data-line") == "4"  # the `ratio_clip_mx:` line
    assert "grpo.ratio_clip_mx" in mark.text
    gutter_errors = browser.find_elements(By.CSS_SELECTOR, ".gutter .err")
    assert [g.text for g in gutter_errors] == ["⚠ 4"]
    item = browser.find_element(By.CSS_SELECTOR, "#config-errors li")
    assert item.get_attribute("data-field") == "grpo.ratio_clip_mx"
    assert controller.call(controller.store.list_runs()) == []
    screenshot(browser, "04-invalid-config")


def test_page_loads_nothing_from_other_origins(browser: Any, controller: ServedApp) -> None:
    from dapo.config import parse_config

    config = parse_config({"policy": {"model_name": "m"}})
    run = controller.call(controller.store.create_run(config, "offline"))
    add_steps(controller, run.id, range(0, 4))
    browser.get("about:blank")
    browser.get(f"{controller.url}/#/runs/{run.id}")
    wait_for(
        browser, lambda d: d.execute_script("return window.__dashboardDrawnAt") is not None, "charts drawn"
    )
    assert reward_points(browser) == 4
    urls = browser.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(e => e.name).concat("
        "[...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href))"
    )
    foreign = [
        u for u in urls if not u.startswith(controller.url + "/") and not u.startswith(("about:", "#"))
    ]
    assert not foreign, f"resources from outside the controller: {foreign}"


def test_asks_for_the_api_token_and_sends_it(browser: Any, redis_server: Any) -> None:
    served = serve_controller(redis_server.url, api_token="s3cret")
    try:
        open_dashboard(browser, served.url)
        browser.execute_script("sessionStorage.clear()")
        paste_config(browser, VALID_CONFIG)
        browser.find_element(By.ID, "start-run").click()
        wait_for(
            browser,
            lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None,
            "dialog",
        )
        screenshot(browser, "05-token-prompt")
        browser.find_element(By.ID, "token-input").send_keys("s3cret")
        browser.find_element(By.ID, "token-save").click()
        wait_for(
            browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-body tr[data-run-id]"), "the new run"
        )
        assert browser.execute_script("return sessionStorage.getItem('dapo.apiToken')") == "s3cret"
        assert len(served.call(served.store.list_runs())) == 1
    finally:
        browser.execute_script("sessionStorage.clear()")
        browser.get("about:blank")
        served.stop()
