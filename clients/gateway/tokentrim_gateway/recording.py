"""The mp4 behind the page's download button: a session's frames as the gateway played them, H.264 via PyAV."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokentrim_client.mp4 import Mp4Writer


class Recording:
    """Encodes off the event loop on one thread of its own, so writes and the final close run in submission order
    even when the session is cancelled while a write is still encoding."""

    def __init__(self, path: Path, fps: float) -> None:
        self._writer = Mp4Writer(path, fps)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokentrim-recording")
        self.frames = 0

    async def write(self, frames: np.ndarray) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.write, frames)
        self.frames += len(frames)

    async def close(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.close)
        finally:
            self._executor.shutdown(wait=False)
