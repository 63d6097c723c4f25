"""Handing a chunk from the denoising thread to the rendering thread without a device-wide wait.

The server denoises on one worker thread and decodes and encodes on another (see
:mod:`tokentrim_server.server.session`), so decoding chunk k can overlap denoising chunk k+1. On CUDA both
threads would otherwise queue their kernels on the device's one default stream: the decode of chunk k would
wait behind everything the denoiser had queued, and each thread's host reads (the render thread's copy of the
frames, a cache policy's ``.item()``) would wait for the other thread's kernels too.

Rendering therefore runs on its own CUDA stream, ordered after the producing stream by an event recorded when
the chunk was finished; the frames come back through pinned host memory, whose copy waits on the render
stream alone and runs at full bus speed. When the render worker decodes several sessions' chunks as one batch
(on its own thread), it does so on the device's batch stream (:func:`batch_stream`), after each session's
render stream reached the decode, and each render stream continues after the batch (:meth:`RenderStream.take`).
On the CPU every step here is a no-op, so the float32 reference path is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ready:
    """The point on the producing stream after which a chunk's tensors are complete (``None``: already are)."""

    event: torch.cuda.Event | None = None


class RenderStream:
    """A side stream for rendering on ``device`` (CUDA), or the plain synchronous path anywhere else."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def mark_ready(self) -> Ready:
        """On the producing thread, after queuing the work that finishes a chunk: mark that point."""
        if self.stream is None:
            return Ready()
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return Ready(event)

    @contextlib.contextmanager
    def rendering(self, ready: Ready | Sequence[Ready], *inputs: torch.Tensor) -> Iterator[None]:
        """Run the body's device work on the render stream, after ``ready`` (one point, or several).

        ``inputs`` were made on another stream: their memory is kept from reuse until the render stream's use
        of them is done (the caching allocator only tracks the stream that allocated them).
        """
        if self.stream is None:
            yield
            return
        self._after(self.stream, [ready] if isinstance(ready, Ready) else ready, inputs)
        with torch.cuda.stream(self.stream):
            yield

    def take(self, ready: Ready, *outputs: torch.Tensor) -> None:
        """Inside :meth:`rendering`: continue after ``ready``, where another stream finished ``outputs``."""
        if self.stream is not None:
            self._after(self.stream, [ready], outputs)

    @staticmethod
    def _after(stream: torch.cuda.Stream, ready: Sequence[Ready], tensors: Sequence[torch.Tensor]) -> None:
        for point in ready:
            if point.event is not None:
                stream.wait_event(point.event)
        for tensor in tensors:
            if tensor.device.type == "cuda":
                tensor.record_stream(stream)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the CPU; from CUDA through pinned memory, waiting for the current stream only."""
        if tensor.device.type != "cuda":
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return host


@functools.cache
def batch_stream(device: torch.device) -> RenderStream:
    """The stream on which the render worker decodes several sessions' chunks as one batch (one per device)."""
    return RenderStream(device)
