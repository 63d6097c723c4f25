"""The API's generated code never goes stale, the .proto files stay lint-clean under buf, and v1 only grows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF_HINT = "install buf with `npm install --prefix .tools @bufbuild/buf` (`make tools` does) or put it on PATH"


def buf_binary() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_generated_code_matches_the_proto_files():
    result = subprocess.run([sys.executable, "proto/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_buf_lint_is_clean():
    buf = buf_binary()
    if buf is None:
        pytest.skip(f"buf not found: {BUF_HINT}")
    result = subprocess.run([buf, "lint"], cwd=ROOT / "proto", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_stays_backward_compatible():
    """buf breaking against the last released v1 (tests/data/proto-baseline): fields are only ever added."""
    buf = buf_binary()
    if buf is None:
        pytest.skip(f"buf not found: {BUF_HINT}")
    baseline = ROOT / "tests" / "data" / "proto-baseline"
    result = subprocess.run([buf, "breaking", "--against", str(baseline)], cwd=ROOT / "proto", capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
