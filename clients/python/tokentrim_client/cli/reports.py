"""The JSON-lines log of per-chunk reports written by ``stream --reports``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokentrim_client.decoding import ReceivedChunk


def chunk_record(chunk: ReceivedChunk, received_seconds: float) -> dict[str, Any]:
    """One line of the log: where the chunk is, what it cost, and what the cache policy and hooks did."""
    return {
        "index": chunk.index,
        "first_frame": chunk.first_frame,
        "frame_count": chunk.frame_count,
        "prompt_version": chunk.prompt_version,
        "received_seconds": round(received_seconds, 6),
        "timings": chunk.timings,
        "cache_report": chunk.report,
        "hook_reports": chunk.hook_reports,
    }


class ReportLog:
    """Appends one JSON object per line, flushed each time so the log survives an abrupt end."""

    def __init__(self, path: str | Path) -> None:
        self._file = Path(path).open("w", encoding="utf-8")  # noqa: SIM115 - open for the session's lifetime

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
