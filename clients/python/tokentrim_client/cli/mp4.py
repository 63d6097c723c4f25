"""H.264 / yuv420p MP4 output of streamed frames, written chunk by chunk with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# x264 settings: visually near-lossless and fast enough to keep up with a stream on a laptop CPU.
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}


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
    """Appends ``uint8 [F, H, W, 3]`` RGB batches; the file is created with the first batch, so a session
    that delivered nothing leaves no file behind. ``close`` must run for the file to be playable."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.rate = frame_rate(fps)
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 [F, H, W, 3] frames, got {frames.dtype} {list(frames.shape)}")
        frames = even_sized(frames)
        stream = self._stream or self._open(height=frames.shape[1], width=frames.shape[2])
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written  # in units of 1/rate: frame n shows at n / fps
            self._mux(stream.encode(frame))
            self.frames_written += 1

    def close(self) -> None:
        """Drain the encoder and write the index; safe to call more than once."""
        if self._container is None or self._stream is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = self._stream = None

    def _open(self, *, height: int, width: int) -> av.video.stream.VideoStream:
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.rate
        stream.options = dict(X264_OPTIONS)
        self._container, self._stream = container, stream
        return stream

    def _mux(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        for packet in packets:
            self._container.mux(packet)
