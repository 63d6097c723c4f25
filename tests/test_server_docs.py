"""The server's documentation lists every option and every metric series it has."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokentrim_server.server.config import ServerConfig
from tokentrim_server.server.metrics import ServerMetrics

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_option_is_documented():
    text = (DOCS / "server.md").read_text()
    missing = [f.name for f in dataclasses.fields(ServerConfig) if f"`--{f.name.replace('_', '-')}`" not in text]
    assert not missing


def test_every_series_is_documented():
    text = (DOCS / "metrics.md").read_text()
    names = {family.name for family in ServerMetrics(1, 1, "m", "v").registry.collect()}
    # prometheus_client drops the _total suffix of counters from family names
    missing = [name for name in names if f"`{name}`" not in text and f"`{name}_total`" not in text]
    assert not missing
