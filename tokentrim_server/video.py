"""Incremental MP4 (H.264) writing of streamed frames with PyAV.

Frames arrive a chunk at a time while a video is still being generated, so the encoder is fed batch by
batch instead of collecting the whole clip first.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch


class Mp4Writer:
    """Write ``uint8`` frame batches ``[T, H, W, 3]`` (RGB) to an H.264 / yuv420p MP4 file.

    The stream is opened on the first batch, whose size fixes the video size. yuv420p subsamples chroma
    by 2 in both directions, so odd sizes are padded to even by repeating the last row / column.
    """

    def __init__(
        self,
        path: str | Path,
        fps: int = 16,
        *,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"folder for the video does not exist: {self.path.parent}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._options = {"crf": str(crf), "preset": preset}
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self._frames_written = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._frames_written

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Encode a batch of frames ``[T, H, W, 3]`` of dtype ``uint8``."""
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        batch = _as_uint8_batch(frames)
        size = (batch.shape[1], batch.shape[2])
        if self._size is None:
            self._open(size)
        elif size != self._size:
            raise ValueError(f"frame size changed from {self._size} to {size}")
        assert self._container is not None and self._stream is not None
        batch = _pad_to_even(batch)
        for image in batch:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self._frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        assert self._stream is not None
        try:
            for packet in self._stream.encode():  # drain frames the encoder is still holding
                self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self, size: tuple[int, int]) -> None:
        height, width = size
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream("libx264", rate=Fraction(self.fps))
        stream.height = height + height % 2
        stream.width = width + width % 2
        stream.pix_fmt = "yuv420p"
        stream.options = self._options
        self._container, self._stream, self._size = container, stream, size


def _as_uint8_batch(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    return np.ascontiguousarray(frames)


def _pad_to_even(batch: np.ndarray) -> np.ndarray:
    pad_h, pad_w = batch.shape[1] % 2, batch.shape[2] % 2
    if not (pad_h or pad_w):
        return batch
    return np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
