"""H.264 / yuv420p MP4 output of streamed frames, written chunk by chunk with PyAV.

Frames arrive a chunk at a time while a video is still being generated, so the encoder is fed batch by batch
instead of collecting the whole clip first. This is the one MP4 writer of the project: the server's
``tokentrim-generate`` uses it too (``tokentrim_server.video``), and it lives here because the client must
install without the server (and without torch), while the server can depend on the light client.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self

import av
import numpy as np

# x264 settings: visually near-lossless and fast enough to keep up with a stream on a laptop CPU.
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
WAN_FPS = 16  # Wan 2.1's frame rate, for callers that know no other


def frame_rate(fps: float) -> Fraction:
    """The rate as a small exact fraction (16.0 -> 16, 23.976 -> 2997/125), as the container wants."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def even_sized(frames: np.ndarray) -> np.ndarray:
    """yuv420p halves chroma both ways, so odd sizes get one more row / column repeated from the edge."""
    extra_rows, extra_cols = frames.shape[1] % 2, frames.shape[2] % 2
    if extra_rows or extra_cols:
        frames = np.pad(frames, ((0, 0), (0, extra_rows), (0, extra_cols), (0, 0)), mode="edge")
    return frames


class Mp4Writer:
    """Appends ``uint8 [T, H, W, 3]`` RGB batches to one video.

    The file is created with the first batch, whose size fixes the video's, so a session that delivered
    nothing leaves no file behind. ``close`` (or leaving a ``with`` block) must run for the file to be playable.
    """

    def __init__(self, path: str | Path, fps: float = WAN_FPS) -> None:
        self.path = Path(path)
        # Checked here, not at the first batch, so a caller learns before it spends time generating frames.
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"folder for the video does not exist: {self.path.parent}")
        self.rate = frame_rate(fps)
        self._frames_written = 0
        self._closed = False
        self._size: tuple[int, int] | None = None  # (height, width) of the first batch, before padding
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    @property
    def frames_written(self) -> int:
        return self._frames_written

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, frames: np.ndarray) -> None:
        """Encode a batch of frames ``[T, H, W, 3]`` of dtype ``uint8``, the size of every earlier batch."""
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got shape {list(frames.shape)}")
        size = (frames.shape[1], frames.shape[2])
        if self._size is not None and size != self._size:
            raise ValueError(f"frame size changed from {self._size} to {size}")
        frames = even_sized(frames)
        stream = self._stream or self._open(size, height=frames.shape[1], width=frames.shape[2])
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self._frames_written  # in units of 1/rate: frame n shows at n / fps
            self._mux(stream.encode(frame))
            self._frames_written += 1

    def close(self) -> None:
        """Drain the encoder and write the index; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._container is None or self._stream is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _open(self, size: tuple[int, int], *, height: int, width: int) -> av.video.stream.VideoStream:
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.rate
        stream.options = dict(X264_OPTIONS)
        self._container, self._stream, self._size = container, stream, size
        return stream

    def _mux(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        for packet in packets:
            self._container.mux(packet)
