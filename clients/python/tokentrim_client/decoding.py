"""Chunk messages to numpy arrays and plain dicts."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message
from PIL import Image
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_client.errors import protocol_error


@dataclass(frozen=True)
class ReceivedChunk:
    """One chunk as the caller sees it.

    ``frames`` is ``uint8 [F, H, W, 3]`` RGB for JPEG and raw output and None for latents; ``latents`` is
    ``float32`` shaped as the server sent it (``[frames, channels, height, width]``) or None. ``report`` and
    ``timings`` are the chunk's CacheReport and ChunkTimings as dicts keyed by field name (unset optional
    fields are None). ``message`` is the Chunk proto itself, for anything else.
    """

    index: int
    first_frame: int
    frames: np.ndarray | None
    latents: np.ndarray | None
    message: pb.Chunk
    report: dict[str, Any]
    timings: dict[str, Any]

    @property
    def frame_count(self) -> int:
        return self.message.frame_count

    @property
    def prompt_version(self) -> int:
        """How many prompt changes the server had applied before this chunk."""
        return self.message.prompt_version

    @property
    def slack_seconds(self) -> float:
        """How far the stream was ahead of a viewer playing it in real time when the server sent this chunk
        (negative: such a viewer would have stalled; see the server's playout clock)."""
        return self.message.slack_seconds

    @property
    def hook_reports(self) -> list[dict[str, Any]]:
        """The session hooks' reports (first chunk only) as dicts: name, seconds, values."""
        return [{"name": r.name, "seconds": r.seconds, "values": dict(r.values)} for r in self.message.hook_reports]


def message_fields(message: Message) -> dict[str, Any]:
    """A flat message of scalars as a dict; optional fields that are unset become None.

    Used instead of json_format.MessageToDict, which turns 64-bit integers into strings and drops zeros.
    """
    fields: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        unset = field.has_presence and not message.HasField(field.name)
        fields[field.name] = None if unset else getattr(message, field.name)
    return fields


def decode_jpeg_frames(images: Sequence[bytes]) -> np.ndarray:
    if not images:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    frames = []
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def decode_rgb(data: bytes, frame_count: int, height: int, width: int) -> np.ndarray:
    expected = frame_count * height * width * 3
    if len(data) != expected:
        raise protocol_error(f"raw chunk has {len(data)} bytes, expected {frame_count}x{height}x{width}x3={expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape(frame_count, height, width, 3)


def decode_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A Tensor message as float32; little-endian on the wire whatever this machine is."""
    shape = tuple(tensor.shape)
    if tensor.dtype == "bfloat16":  # numpy has no bfloat16: its bits are the high half of a float32's
        halves = np.frombuffer(tensor.data, dtype="<u2").astype(np.uint32) << 16
        values = halves.view(np.float32)
    else:
        try:
            dtype = np.dtype(tensor.dtype).newbyteorder("<")
        except TypeError:
            raise protocol_error(f"unknown tensor dtype {tensor.dtype!r}") from None
        values = np.frombuffer(tensor.data, dtype=dtype)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise protocol_error(f"tensor of shape {list(shape)} has {values.size} elements")
    return values.astype(np.float32, copy=False).reshape(shape)


def decode_chunk(chunk: pb.Chunk, started: pb.SessionStarted) -> ReceivedChunk:
    """Decode a chunk's payload by its encoding; the raw size comes from the session's SessionStarted."""
    frames = latents = None
    if chunk.encoding == pb.ENCODING_LATENTS:
        latents = decode_tensor(chunk.latents)
    elif chunk.encoding == pb.ENCODING_RAW_RGB:
        frames = decode_rgb(chunk.rgb, chunk.frame_count, started.height, started.width)
    else:  # ENCODING_JPEG, and UNSPECIFIED, which the API defines as JPEG
        frames = decode_jpeg_frames(chunk.jpeg_frames)
    return ReceivedChunk(
        index=chunk.index,
        first_frame=chunk.first_frame,
        frames=frames,
        latents=latents,
        message=chunk,
        report=message_fields(chunk.cache_report),
        timings=message_fields(chunk.timings),
    )
