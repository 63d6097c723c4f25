"""The paths that let host and device overlap: rendering on its own stream (a no-op on the CPU, and on CUDA the
same frames as rendering in line) and noise copied from pinned memory (the same numbers as the CPU's)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from tokentrim.v1 import streaming_pb2 as pb

from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.engine.render_stream import Ready, RenderStream
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.server.config import load_config
from tokentrim_server.server.requests import RequestValidator

SIZE = 32
CHUNKS = 4


def open_session(bundle: ModelBundle, encoding: str = "jpeg") -> GenerationSession:
    config = load_config(["--max-height", str(SIZE), "--max-width", str(SIZE)], {})
    validator = RequestValidator(config, bundle, bundle.default_size, 2**30)
    start = pb.StartSession(prompt="a red car on a beach", seed=3, chunks=CHUNKS, height=SIZE, width=SIZE)
    if encoding == "latents":
        start.output.encoding = pb.ENCODING_LATENTS
    return GenerationSession(bundle, validator.plan(start).plan)


def render_in_line(bundle: ModelBundle, encoding: str = "jpeg") -> list[np.ndarray]:
    """Step and render one chunk at a time on one thread, waiting for the device after each."""
    session = open_session(bundle, encoding)
    outputs = []
    for _ in range(CHUNKS):
        step = session.step()
        outputs.append(session.latents(step) if encoding == "latents" else session.decode(step))
    session.close()
    return outputs


def render_overlapped(bundle: ModelBundle) -> list[np.ndarray]:
    """The server's arrangement: chunk k decodes on a render thread while chunk k+1 is denoised."""
    session = open_session(bundle)
    with ThreadPoolExecutor(1, thread_name_prefix="render") as render:
        futures = [render.submit(session.decode, session.step()) for _ in range(CHUNKS)]
        outputs = [future.result() for future in futures]
    session.close()
    return outputs


def test_cpu_render_stream_is_the_plain_path():
    render_stream = RenderStream("cpu")
    assert render_stream.stream is None
    ready = render_stream.mark_ready()
    assert ready == Ready()
    tensor = torch.arange(6.0).view(2, 3)
    with render_stream.rendering(ready, tensor):
        host = render_stream.to_host(tensor * 2)
    assert host.device.type == "cpu"
    torch.testing.assert_close(host, tensor * 2)


def test_steps_carry_their_ready_mark_and_latents_come_back_as_float32(tiny_bundle):
    session = open_session(tiny_bundle, encoding="latents")
    step = session.step()
    assert step.ready == Ready()  # CPU: nothing to wait for
    values = session.latents(step)
    assert values.dtype == np.float32
    assert values.shape == tuple(step.result.chunk.latents.shape[1:])
    np.testing.assert_array_equal(values, step.result.chunk.latents[0].float().numpy())
    assert session.frames_emitted == step.result.chunk.latents.shape[1]
    session.close()


def test_overlapped_rendering_gives_the_in_line_frames_on_cpu(tiny_bundle):
    for in_line, overlapped in zip(render_in_line(tiny_bundle), render_overlapped(tiny_bundle), strict=True):
        np.testing.assert_array_equal(overlapped, in_line)


@pytest.fixture(scope="module")
def cuda_bundle() -> ModelBundle:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on a GPU machine: benchmarks/gpu_suite.sh runs this module)")
    return load_model(ModelSpec(model="tiny", device="cuda", dtype="float32"))


def test_cuda_render_stream_orders_after_the_producer(cuda_bundle):
    device = cuda_bundle.transformer.device
    render_stream = RenderStream(device)
    assert render_stream.stream is not None
    # A long producer queue: without the event, the render stream would read the input before it is written.
    source = torch.zeros(4096, 4096, device=device)
    for _ in range(20):
        source.add_(1.0)
    ready = render_stream.mark_ready()
    with render_stream.rendering(ready, source):
        host = render_stream.to_host(source[:4, :4].clone())
    assert host.is_pinned()
    torch.testing.assert_close(host, torch.full((4, 4), 20.0))


def test_cuda_overlapped_rendering_gives_the_in_line_frames(cuda_bundle):
    for in_line, overlapped in zip(render_in_line(cuda_bundle), render_overlapped(cuda_bundle), strict=True):
        # Same kernels, same inputs; a decode on another stream may pick another cuDNN algorithm: one level.
        assert np.abs(overlapped.astype(int) - in_line.astype(int)).max() <= 1


def test_cuda_noise_is_the_cpu_noise(cuda_bundle):
    device = cuda_bundle.transformer.device
    noise = SeededNoise(11)
    shape = (1, 3, 16, 4, 4)
    for dtype in (torch.float32, torch.bfloat16):
        on_cuda = noise.renoise(2, 1, shape, device, dtype)
        assert on_cuda.dtype == dtype and on_cuda.device.type == "cuda"
        torch.testing.assert_close(on_cuda.cpu(), noise.renoise(2, 1, shape, torch.device("cpu"), dtype),
                                   rtol=0, atol=0)
