"""MP4 (H.264) writing of streamed frames for ``tokentrim-generate``.

The writer is the client's (:mod:`tokentrim_client.mp4`), so the server and the client write videos one way;
only torch input is added here, because the client does not depend on torch.
"""

from __future__ import annotations

import numpy as np
import torch
from tokentrim_client import mp4


class Mp4Writer(mp4.Mp4Writer):
    """:class:`tokentrim_client.mp4.Mp4Writer` that also takes ``uint8`` tensors ``[T, H, W, 3]`` on any device."""

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        super().write(frames)
