"""A gateway on a background event loop, in process (so tests can look at its viewers and metrics), and headless
Chromium driven through Debian's chromedriver."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tokentrim_gateway.cli import running
from tokentrim_gateway.config import load_config
from tokentrim_gateway.web import Gateway

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "run `make tools` (Debian/Ubuntu: apt-get install chromium chromium-driver)"


class GatewayThread:
    """``tokentrim-gateway`` with ``flags`` on a free localhost port, metrics on another; ``url`` is the page."""

    def __init__(self, server_target: str, *flags: str) -> None:
        self.config = load_config(["--server", server_target, "--listen", "127.0.0.1:0", "--metrics-port", "0",
                                   *flags], environ={})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self._thread.start()
        self._ready = threading.Event()
        self._stop = self.call(self._event)
        self._main = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        if not self._ready.wait(30):
            raise RuntimeError(f"the gateway did not start: {self._main.exception(timeout=1)}")

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    async def _serve(self) -> None:
        async with running(self.config) as (gateway, url, metrics_port):
            self.gateway: Gateway = gateway
            self.url = url
            self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            self._ready.set()
            await self._stop.wait()

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(function(*args), self.loop).result(timeout=60)

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._main.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium as selenium's ``WebDriver``; skips with an install hint where it is missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"Chromium and chromedriver are not installed: {INSTALL_HINT}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: "
                                    "pip install -e 'clients/gateway[dev]'")
    profile = tempfile.mkdtemp(prefix="tokentrim-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 # Host candidates as addresses, not mDNS names: nothing here answers multicast DNS.
                 "--disable-features=WebRtcHideLocalIpsWithMdns", "--window-size=1100,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
