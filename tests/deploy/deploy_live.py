"""Helpers of the live deploy tests: processes, ports, waiting, the server under test and Prometheus' HTTP API."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from deploy_support import run_tool

SESSION_CHUNKS = 3
STARTUP_SECONDS = 120  # importing torch and building the tiny model; generous for a loaded CI machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def responds(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except (urllib.error.URLError, OSError):
        return False
    return True


@dataclass(frozen=True)
class Process:
    """A background process of a test, its output going to ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = STARTUP_SECONDS) -> None:
        """Poll until ``ready()``; fail with the log when the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.popen.poll()
            if code is not None or time.monotonic() > deadline:
                state = f"exited with {code}" if code is not None else f"not after {timeout} s"
                pytest.fail(f"waiting for {what}: {state}; {self.log.name}:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.25)


@contextmanager
def running(command: list[str], folder: Path, env: dict[str, str] | None = None) -> Iterator[Process]:
    """Run ``command`` in ``folder`` (log: ``folder``/output.log) until the block ends: SIGTERM, then SIGKILL."""
    log = folder / "output.log"
    with log.open("wb") as output:
        popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=folder, env=env)
    try:
        yield Process(popen, log)
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


@dataclass(frozen=True)
class LiveServer:
    target: str  # gRPC HOST:PORT
    metrics_address: str  # HOST:PORT of /metrics
    client: str  # the tokentrim-client command

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics"

    def run_session(self) -> None:
        """One session of SESSION_CHUNKS chunks under the tokentrim cache policy with a prompt change, so that
        counters, histograms and policy series all move."""
        run_tool(self.client, "stream", "--target", self.target, "--prompt", "a red car on a beach",
                 "--chunks", str(SESSION_CHUNKS), "--policy", "tokentrim", "--switch", "1:a blue car on a beach",
                 "--quiet", timeout=STARTUP_SECONDS)


class PrometheusApi:
    """The parts of Prometheus' HTTP API the tests use."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._answer(lambda: urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar); a PromQL error fails the test with Prometheus' message."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        data = self._answer(lambda: urllib.request.urlopen(f"{self.url}/api/v1/query", data=body, timeout=10))
        return data["result"]

    def value(self, expr: str) -> float:
        """A query's single value; NaN when it returns nothing."""
        result = self.query(f"scalar({expr})")
        return float(result[1])

    @staticmethod
    def _answer(request: Callable[[], Any]) -> Any:
        try:
            with request() as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: a bad expression; the body says why
            answer = json.load(error)
        assert answer["status"] == "success", f"{answer.get('errorType')}: {answer.get('error')}"
        return answer["data"]


def rules(api: PrometheusApi) -> list[dict[str, Any]]:
    return [rule for group in api.get("/api/v1/rules")["groups"] for rule in group["rules"]]


def timestamp(text: str) -> datetime:
    """One of Prometheus' RFC 3339 times (nanoseconds cut to what datetime holds)."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text))


