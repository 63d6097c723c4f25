"""One rollout: a lab model continues a scene's true first chunk(s) under one arm, measured against the truth.

For a scene seed ``s`` every arm sees the same scene, the same prefilled true chunks, the same keyed noise
(``SeededNoise(s)``) and the same prompt (the scene's caption), so two arms' rollouts on one seed differ only
through their policies. The true video is encoded once per (model, seed) and shared (:class:`Truth`).

Frame bookkeeping (Wan's causal VAE, 4x in time): latent frame 0 decodes to video frame 0 and latent frame
``f >= 1`` to video frames ``4f - 3 .. 4f``, so ``n`` chunks of 3 latent frames are ``12 n - 3`` video frames
and generated chunk ``k >= 1`` starts at world frame ``12 k - 3``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_lab.arms import Arm
from drift_lab.latents import encode_frames
from drift_lab.measure import FrameMetrics, measure
from drift_lab.model import FRAMES_PER_BLOCK, TRAINING_FILE, TrainingConfig, lab_pipeline_options
from drift_lab.world import DATA_VERSION, Scene, WorldSpec, render, sample_scene
from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import SessionHook
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.models.vae import StreamingVaeDecoder, frames_to_uint8
from tokentrim_server.pipelines.base import Chunk, StreamBase
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.policies import CachePolicy

# A model folder without training.json (e.g. a bare diffusers folder) is taken to be trained on 3 chunks.
DEFAULT_CLIP_CHUNKS = 3
# Scene seeds of evaluations start here, far above any training scene index, so no evaluated scene was seen
# in training (the world is continuous, so a scene is only "seen" if its seed was).
EVALUATION_SEED_OFFSET = 1_000_000


@dataclass
class LabModel:
    """A loaded lab model and what its training recorded.

    ``clip_chunks`` is the training clip length in chunks (the "training horizon"); ``world`` the world
    spec its scenes are drawn from (frame size = the model's ``default_size``); ``pipeline_options`` the
    per-pipeline option overrides rollouts use (from ``training.json`` when recorded there).
    """

    name: str
    bundle: ModelBundle
    clip_chunks: int = DEFAULT_CLIP_CHUNKS
    world: WorldSpec = field(default_factory=WorldSpec)
    pipeline_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def options(self, pipeline: str) -> dict[str, Any]:
        """Pipeline option overrides for rollouts: the recorded ones (``training.json``'s
        ``pipeline_options``), else those of a model trained at the pipelines' default schedule
        (:func:`drift_lab.model.lab_pipeline_options`)."""
        if pipeline in self.pipeline_options:
            return dict(self.pipeline_options[pipeline])
        return lab_pipeline_options(TrainingConfig(clip_chunks=self.clip_chunks))[pipeline]


def load_lab_model(folder: str | Path, device: str = "cpu", dtype: str = "float32") -> LabModel:
    """Load a lab model folder (``training.json`` optional: defaults for a bare model folder)."""
    root = Path(folder)
    bundle = load_model(ModelSpec(model=str(root), device=device, dtype=dtype))
    path = root / TRAINING_FILE
    metadata: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return lab_model(root.name, bundle, metadata)


def lab_model(name: str, bundle: ModelBundle, metadata: Mapping[str, Any]) -> LabModel:
    """A :class:`LabModel` from a loaded bundle and its training record (checked against this world)."""
    world = recorded_world(name, metadata, bundle.default_size)
    clip_chunks = recorded_clip_chunks(metadata)
    return LabModel(name, bundle, clip_chunks, world, dict(metadata.get("pipeline_options", {})), dict(metadata))


def recorded_world(name: str, metadata: Mapping[str, Any], size: tuple[int, int] | None = None) -> WorldSpec:
    """The world a model was trained on, from its ``training.json`` (checked against this lab's world
    version), at frame ``size`` (height, width) when given."""
    recorded = metadata.get("data_version")
    if recorded is not None and recorded != DATA_VERSION:
        raise ValueError(f"model {name} was trained on world {recorded}; this lab renders {DATA_VERSION}")
    # JSON has no tuples; WorldSpec's range fields are tuples.
    world = {key: tuple(value) if isinstance(value, list) else value
             for key, value in dict(metadata.get("world", {})).items()}  # fmt: skip
    if size is not None:
        world.update(height=size[0], width=size[1])
    return WorldSpec(**world)


def recorded_clip_chunks(metadata: Mapping[str, Any]) -> int:
    """The training horizon in chunks from ``training.json`` (``DEFAULT_CLIP_CHUNKS`` when absent)."""
    clip_chunks = int(metadata.get("clip_chunks", DEFAULT_CLIP_CHUNKS))
    if clip_chunks < 2:
        raise ValueError(f"training.json clip_chunks must be >= 2; got {clip_chunks}")
    return clip_chunks


def chunk_first_frame(chunk: int, frames_per_block: int = FRAMES_PER_BLOCK, temporal_scale: int = 4) -> int:
    """World (video) frame index of the first frame decoded from latent chunk ``chunk``."""
    latent = chunk * frames_per_block
    return 0 if latent == 0 else 1 + temporal_scale * (latent - 1)


@dataclass
class Truth:
    """A scene and its true video's latents ``[1, F, C, h, w]`` from frame 0, ``chunks`` chunks of them encoded.

    Only what rollouts read is encoded: the prefilled chunks, or every chunk when an arm compares with the
    truth (the oracle). The causal VAE encodes a prefix of a video exactly as it encodes it inside the whole.
    """

    seed: int
    scene: Scene
    chunks: int
    latents: torch.Tensor

    def chunk(self, index: int) -> Chunk:
        """True chunk ``index`` as the pipeline's :class:`Chunk` (for prefilling)."""
        if not 0 <= index < self.chunks:
            raise ValueError(f"chunk {index} is outside the {self.chunks} encoded true chunks")
        frames = slice(index * FRAMES_PER_BLOCK, (index + 1) * FRAMES_PER_BLOCK)
        return Chunk(index, index * FRAMES_PER_BLOCK, self.latents[:, frames])


def make_truth(model: LabModel, seed: int, chunks: int) -> Truth:
    """Render scene ``seed`` of the model's world for ``chunks`` chunks and encode it with the model's VAE."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1; got {chunks}")
    scene = sample_scene(seed, model.world)
    frames = render(scene, 0, chunk_first_frame(chunks))
    latents = encode_frames(model.bundle.vae, frames)
    return Truth(seed, scene, chunks, latents)


@dataclass(frozen=True)
class ChunkRecord:
    """What the engine reported for one generated chunk."""

    index: int
    triggered: bool
    regenerations: int
    tokens_removed: int
    chunk_seconds: float


@dataclass
class Generated:
    """An arm's generated latents ``[1, F, C, h, w]`` (after ``prefill_chunks`` true chunks) and its reports."""

    arm: str
    pipeline: str
    seed: int
    prefill_chunks: int
    latents: torch.Tensor
    chunks: list[ChunkRecord]


@dataclass
class Rollout:
    """A generation decoded into world frames ``start_frame ..`` (uint8 ``[T, H, W, 3]``) and measured."""

    generated: Generated
    start_frame: int
    frames: np.ndarray
    metrics: FrameMetrics


def generate(model: LabModel, arm: Arm, truth: Truth, prefill_chunks: int, chunks: int) -> Generated:
    """Prefill ``prefill_chunks`` true chunks and generate ``chunks`` more under ``arm`` (latents only)."""
    needed = prefill_chunks + chunks if arm.needs_truth else prefill_chunks
    if truth.chunks < needed:
        raise ValueError(f"truth has {truth.chunks} encoded chunks; arm {arm.name!r} needs {needed}")
    policy = arm.create_policy(truth.latents if arm.needs_truth else None)
    return generate_with(model, arm.pipeline, arm.name, policy, truth, prefill_chunks, chunks,
                         hooks=arm.create_hooks())  # fmt: skip


StreamSetup = Callable[[StreamBase], None]
"""Called on a rollout's stream after its prefill, before the first generated chunk (e.g. to inject corruption)."""
AfterChunk = Callable[[StreamBase, Chunk], None]
"""Called after each generated chunk is committed, before the next one starts (e.g. to rewrite the cache)."""


def rewrite_cache_from_truth(truth: Truth, onset: int) -> AfterChunk:
    """After chunk ``onset - 1``, rewrite every cached frame's K/V from the true chunks (the true-cache
    counterfactual): the stream's own cache-writing path under its own prompt, as a prompt switch re-encodes."""

    def after(stream: StreamBase, chunk: Chunk) -> None:
        if chunk.index == onset - 1:
            stream.recache(stream.text, [truth.chunk(index) for index in range(onset)])

    return after


def generate_with(
    model: LabModel,
    pipeline_name: str,
    arm_name: str,
    policy: CachePolicy,
    truth: Truth,
    prefill_chunks: int,
    chunks: int,
    setup: StreamSetup | None = None,
    after_chunk: AfterChunk | None = None,
    hooks: Sequence[SessionHook] = (),
) -> Generated:
    """:func:`generate` with a ready policy instance (any policy), an optional ``setup`` of the stream, a
    callback ``after_chunk`` and session ``hooks`` (fresh instances: a hook keeps per-session state)."""
    if prefill_chunks < 1:
        raise ValueError(f"prefill_chunks must be >= 1; got {prefill_chunks}")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1; got {chunks}")
    if truth.chunks < prefill_chunks:
        raise ValueError(f"truth has {truth.chunks} encoded chunks; the prefill needs {prefill_chunks}")
    bundle = model.bundle
    device = bundle.transformer.device
    pipeline = build_pipeline(pipeline_name, bundle.transformer, model.options(pipeline_name))
    prompt = bundle.prompt_encoder.encode(truth.scene.caption).to(device)
    latent_shape = bundle.latent_shape(truth.scene.height, truth.scene.width)
    stream = pipeline.open(prompt, latent_shape, SeededNoise(truth.seed), num_blocks=prefill_chunks + chunks)
    stream.prefill([truth.chunk(index) for index in range(prefill_chunks)])
    if setup is not None:
        setup(stream)
    latents, records = [], []
    with open_runner(stream, policy, seed=truth.seed, hooks=hooks) as runner:
        for result in runner:
            report = result.report
            records.append(
                ChunkRecord(
                    result.chunk.index,
                    report.triggered,
                    report.regenerations,
                    report.tokens_removed,
                    report.chunk_seconds,
                )
            )
            latents.append(result.chunk.latents.float().cpu())
            if after_chunk is not None:
                after_chunk(stream, result.chunk)
    return Generated(arm_name, pipeline_name, truth.seed, prefill_chunks, torch.cat(latents, dim=1), records)


def decode_and_measure(model: LabModel, truth: Truth, generations: Sequence[Generated]) -> list[Rollout]:
    """Decode generations of one scene together (one batch: the VAE dominates a rollout's time) and measure each.

    The streaming decoder first decodes the prefilled true latents, so its causal context is the true past as
    in the stream; only generated frames are kept, aligned with the world's frame indices.
    """
    if not generations:
        return []
    prefill = generations[0].prefill_chunks
    if any(g.prefill_chunks != prefill or g.latents.shape != generations[0].latents.shape for g in generations):
        raise ValueError("generations decoded together must share their prefill and length")
    videos = decode_after_truth(model, truth, prefill, torch.cat([g.latents for g in generations]))
    start = chunk_first_frame(prefill)
    return [
        Rollout(g, start, video, measure(video, truth.scene, start))
        for g, video in zip(generations, videos, strict=True)
    ]


def decode_after_truth(model: LabModel, truth: Truth, prefill_chunks: int, latents: torch.Tensor) -> np.ndarray:
    """Generated latents ``[B, F, C, h, w]`` decoded as the stream decodes them, after the decoder has decoded the
    ``prefill_chunks`` true chunks (its causal context is the true past): uint8 videos ``[B, T, H, W, 3]`` of the
    generated frames only."""
    vae = model.bundle.vae
    decoder = StreamingVaeDecoder(vae)
    prefix = truth.latents[:, : prefill_chunks * FRAMES_PER_BLOCK]
    decoder.decode_chunk(prefix.expand(latents.shape[0], -1, -1, -1, -1).to(vae.device))
    return decode_chunks(decoder, latents.to(vae.device))


def decode_chunks(decoder: StreamingVaeDecoder, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents ``[B, F, C, h, w]`` decoded chunk by chunk, as the server streams them, into uint8
    videos ``[B, T, H, W, 3]`` (continuing the decoder's causal context)."""
    frames = [frames_to_uint8(decoder.decode_chunk(chunk)).cpu().numpy()
              for chunk in latents.split(FRAMES_PER_BLOCK, dim=1)]  # fmt: skip
    return np.concatenate(frames, axis=1)


def run_rollout(model: LabModel, arm: Arm, truth: Truth, prefill_chunks: int, chunks: int) -> Rollout:
    """Prefill ``prefill_chunks`` true chunks, generate ``chunks`` more under ``arm``, decode and measure them."""
    return decode_and_measure(model, truth, [generate(model, arm, truth, prefill_chunks, chunks)])[0]
