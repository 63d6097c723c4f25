"""Turning a chunk's frames into the payload of a ``Chunk`` message."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tokentrim.v1 import streaming_pb2 as pb


def jpeg_frames(frames: np.ndarray, quality: int) -> list[bytes]:
    """One baseline JPEG per uint8 ``[H, W, 3]`` frame of ``frames``."""
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)  # uint8 [H, W, 3] reads as RGB
        encoded.append(buffer.getvalue())
    return encoded


def fill_payload(message: pb.Chunk, encoding: str, data: np.ndarray, jpeg_quality: int) -> None:
    """Put ``data`` (uint8 frames, or float32 latents for ``latents``) into ``message``."""
    if encoding == "jpeg":
        message.encoding = pb.ENCODING_JPEG
        message.jpeg_frames.extend(jpeg_frames(data, jpeg_quality))
    elif encoding == "raw_rgb":
        message.encoding = pb.ENCODING_RAW_RGB
        message.rgb = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    elif encoding == "latents":
        message.encoding = pb.ENCODING_LATENTS
        message.latents.shape.extend(data.shape)
        message.latents.dtype = "float32"
        message.latents.data = np.ascontiguousarray(data, dtype="<f4").tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
