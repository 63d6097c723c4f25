"""Mp4Writer writes streamed frame batches into one H.264 file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tokentrim_server.video import Mp4Writer


def _solid(frames: int, height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (frames, height, width, 3)).copy()


def _read_back(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream


def test_two_batches_make_one_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with Mp4Writer(path, fps=16) as writer:
        writer.write(_solid(5, 32, 48, (200, 30, 30)))
        writer.write(torch.from_numpy(_solid(4, 32, 48, (30, 30, 200))))
        assert writer.frames_written == 9

    frames, stream = _read_back(path)
    assert len(frames) == 9
    assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    assert frames[0].shape == (32, 48, 3)
    assert stream.average_rate == 16
    # Lossy, but a solid colour survives: red first, blue last.
    np.testing.assert_allclose(frames[0].reshape(-1, 3).mean(0), (200, 30, 30), atol=8)
    np.testing.assert_allclose(frames[-1].reshape(-1, 3).mean(0), (30, 30, 200), atol=8)


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with Mp4Writer(path) as writer:
        writer.write(_solid(3, 33, 47, (90, 160, 40)))
    frames, _ = _read_back(path)
    assert len(frames) == 3 and frames[0].shape == (34, 48, 3)


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    writer = Mp4Writer(tmp_path / "c.mp4")
    writer.write(_solid(1, 16, 16, (0, 0, 0)))
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(_solid(1, 16, 16, (0, 0, 0)))


def test_no_frames_no_file(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "empty.mp4"):
        pass
    assert not (tmp_path / "empty.mp4").exists()


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "bad.mp4") as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((1, 16, 16, 3), dtype=np.float32))
        with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
            writer.write(np.zeros((16, 16, 3), dtype=np.uint8))
        writer.write(_solid(1, 16, 16, (0, 0, 0)))
        with pytest.raises(ValueError, match="size changed"):
            writer.write(_solid(1, 16, 18, (0, 0, 0)))
    with pytest.raises(FileNotFoundError):
        Mp4Writer(tmp_path / "missing" / "x.mp4")
