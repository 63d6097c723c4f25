"""The live one-line progress display of ``stream`` on stderr."""

from __future__ import annotations

from typing import TextIO

from tokentrim_client.session import SessionStats


def progress_line(stats: SessionStats, total_chunks: int) -> str:
    """``chunk 5/16 · 60 frames · 12.3 fps · first frame 1.84 s · prunes 2 · 6.1 s``."""
    of = f"/{total_chunks}" if total_chunks else ""
    first = "-" if stats.first_chunk_seconds is None else f"{stats.first_chunk_seconds:.2f} s"
    return (
        f"chunk {stats.chunks}{of} · {stats.frames} frames · {stats.frames_per_second:.1f} fps · "
        f"first frame {first} · prunes {stats.prune_events} · {stats.elapsed:.1f} s"
    )


class Progress:
    """Rewrites one line in place on a terminal; on a pipe or file writes a line per update instead, since a
    carriage return there only makes one very long line. Silent when ``quiet``."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._live = stream.isatty()
        self._dirty = False  # a live line is showing and must be ended before other output

    def update(self, line: str) -> None:
        if self._quiet:
            return
        if self._live:
            self._stream.write(f"\r{line}\x1b[K")
            self._dirty = True
        else:
            self._stream.write(f"{line}\n")
        self._stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (notices, the summary); nothing when quiet."""
        if not self._quiet:
            self.error(text)

    def error(self, text: str) -> None:
        """A line of its own, shown even when quiet."""
        self._end_line()
        self._stream.write(f"{text}\n")
        self._stream.flush()

    def _end_line(self) -> None:
        if self._dirty:
            self._stream.write("\n")
            self._dirty = False
