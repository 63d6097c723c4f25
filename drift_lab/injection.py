"""Injected corruption: a positive control for cache policies, with known truth about *where* the error is.

A lab model's natural drift has no ground truth at the token level. Here the error is put in on purpose, at a
known token region of a known chunk, and the question becomes measurable: does a policy find the corrupted
positions (precision, recall, the ROC AUC of its per-token drift), and does pruning them stop the error from
being copied forward (divergence from the same-noise uncorrupted twin, chunk by chunk)?

An :class:`Injection` corrupts generated chunk ``chunk`` of a Self Forcing stream, at its commit, in one of two
places (``target``):

* ``cache``: the emitted chunk stays clean, but the K/V written into the cache for the region's tokens (in
  every frame of the chunk) become ``K + dose * (K_c - K)``, where ``K_c`` is what the cache-writing call
  writes for the chunk with the region replaced by the corruption source. Only later chunks can show it.
* ``emitted``: the chunk's latent itself becomes ``x0 + dose * mask * (source - x0)`` before its commit, so
  the chunk is emitted corrupted and cached as such (what a glitch in generation looks like).

The ``source`` (``kind``) is a coherent ``patch`` (the scene's true frames of that chunk with the region
painted in an object colour absent from the scene, encoded through the model's own autoencoder: something
the model can copy) or unstructured ``noise`` (standard normal latents, keyed by the scene seed). Both blends
are exact at ``dose = 0``: ``a + 0 * (b - a) == a`` in floating point, so a zero dose reproduces the
uncorrupted run bit for bit through the same code path.

Only Self Forcing takes injections: its cache-writing call is one call per chunk at the chunk's own frames.
Rolling Forcing writes a block's cache entry while later blocks are still being denoised with it, so
"corrupt chunk k's cache entry" has no single moment there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from drift_lab.arms import ForwardingPolicy, token_drift
from drift_lab.latents import encode_frames
from drift_lab.model import FRAMES_PER_BLOCK
from drift_lab.rollout import LabModel, Truth, chunk_first_frame
from drift_lab.world import OBJECT_COLOURS, render
from tokentrim_server.pipelines.base import Chunk, StreamBase
from tokentrim_server.pipelines.self_forcing import SelfForcingStream
from tokentrim_server.policies import CacheHandle, CachePolicy, Candidate, Decision, Stage

Target = Literal["cache", "emitted"]
Kind = Literal["patch", "noise"]
TARGETS: tuple[Target, ...] = ("cache", "emitted")
KINDS: tuple[Kind, ...] = ("patch", "noise")


@dataclass(frozen=True)
class Region:
    """A rectangle of the token grid: rows ``[top, top + height)``, columns ``[left, left + width)``."""

    top: int
    left: int
    height: int
    width: int

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """Token positions (row-major indices inside a frame, as the cache numbers them) of the region."""
        rows, columns = grid
        inside = 0 <= self.top < self.top + self.height <= rows and 0 <= self.left < self.left + self.width <= columns
        if not inside:
            raise ValueError(f"region {self} does not fit the {rows}x{columns} token grid")
        row = torch.arange(self.top, self.top + self.height)
        column = torch.arange(self.left, self.left + self.width)
        return (row[:, None] * columns + column[None, :]).flatten()


@dataclass(frozen=True)
class Injection:
    """Corrupt generated chunk ``chunk`` at ``region`` (``target``, ``kind``, ``dose`` in [0, 1])."""

    target: Target
    kind: Kind
    chunk: int
    region: Region
    dose: float

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {self.target!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not 0.0 <= self.dose <= 1.0:
            raise ValueError(f"dose must be in [0, 1]; got {self.dose}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 (a generated chunk); got {self.chunk}")

    @property
    def scenario(self) -> str:
        return f"{self.target}_{self.kind}"


def token_grid(latent_size: tuple[int, int], patch: tuple[int, int, int]) -> tuple[int, int]:
    """Rows and columns of the token grid of latents of ``latent_size`` (height, width) in ``patch`` patches."""
    return latent_size[0] // patch[1], latent_size[1] // patch[2]


def absent_colour(truth: Truth) -> str:
    """The first object colour (palette order) that no object of the scene has."""
    used = {shape.colour for shape in truth.scene.shapes}
    return next(colour for colour in OBJECT_COLOURS if colour not in used)


def corruption_source(model: LabModel, truth: Truth, injection: Injection) -> torch.Tensor:
    """The latents ``[1, F, C, h, w]`` the region is replaced by (everywhere else they are unused).

    ``patch``: the true video up to the end of the chunk, the chunk's frames painted with an absent object
    colour over the region's pixels, encoded causally like the truth; ``noise``: N(0, 1) keyed by the seed.
    """
    shape = (1, FRAMES_PER_BLOCK, *truth.latents.shape[2:])
    if injection.kind == "noise":
        generator = torch.Generator().manual_seed(truth.seed * 1_000 + injection.chunk)
        return torch.randn(shape, generator=generator)
    first, end = chunk_first_frame(injection.chunk), chunk_first_frame(injection.chunk + 1)
    frames = render(truth.scene, 0, end).copy()
    rows, columns = token_grid(truth.latents.shape[-2:], model.bundle.transformer.patch_size)
    pixel_height, pixel_width = frames.shape[1] // rows, frames.shape[2] // columns
    region = injection.region
    top, left = region.top * pixel_height, region.left * pixel_width
    frames[first:end, top : top + region.height * pixel_height, left : left + region.width * pixel_width] = (
        OBJECT_COLOURS[absent_colour(truth)]
    )
    latents = encode_frames(model.bundle.vae, frames)
    start = injection.chunk * FRAMES_PER_BLOCK
    return latents[:, start : start + FRAMES_PER_BLOCK].float().cpu()


def region_mask(
    injection: Injection, grid: tuple[int, int], latents: torch.Tensor, patch: tuple[int, int, int]
) -> torch.Tensor:
    """1 on the region's latent pixels, 0 elsewhere, shaped ``[1, 1, 1, h, w]`` to broadcast over a chunk."""
    _, ph, pw = patch
    mask = torch.zeros(grid, dtype=latents.dtype, device=latents.device)
    region = injection.region
    mask[region.top : region.top + region.height, region.left : region.left + region.width] = 1
    return mask.repeat_interleave(ph, 0).repeat_interleave(pw, 1)[None, None, None]


def blend(clean: torch.Tensor, corrupt: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``clean + weight * (corrupt - clean)``: exactly ``clean`` where the weight is 0."""
    return clean + weight * (corrupt - clean)


class InjectedCommit:
    """Replaces a Self Forcing stream's ``commit`` so that chunk ``injection.chunk`` is corrupted as it commits.

    Installed on the stream instance (:func:`install`): the stream's own chunk attempts call ``self.commit``, so
    the corruption happens after the policy accepted the chunk and before the next chunk starts, whatever stage
    the policy inspects. ``applied`` records whether it ran.
    """

    def __init__(self, stream: SelfForcingStream, injection: Injection, source: torch.Tensor) -> None:
        self.stream = stream
        self.injection = injection
        self.source = source
        self.original = stream.commit
        self.applied = False

    def __call__(self, x0: torch.Tensor) -> Chunk:
        stream = self.stream
        if stream.block != self.injection.chunk:
            return self.original(x0)
        self.applied = True
        source = self.source.to(device=x0.device, dtype=x0.dtype)
        grid = token_grid(stream.block_shape[-2:], stream.model.patch_size)
        mask = region_mask(self.injection, grid, x0, stream.model.patch_size)
        if self.injection.target == "emitted":
            return self.original(blend(x0, source, self.injection.dose * mask))
        corrupted_kv = self._cache_entry(blend(x0, source, mask))
        chunk = self.original(x0)
        self._corrupt_cache(corrupted_kv, grid)
        return chunk

    def _cache_entry(self, latents: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The K/V the cache-writing call writes for ``latents`` at the current block, per layer (nothing kept)."""
        stream, cache = self.stream, self.stream.cache
        stream.block_call(latents, stream.options.context_noise)
        entry = [tuple(t.clone() for t in cache.keys_values(layer, cache.length)) for layer in range(cache.num_layers)]
        cache.discard_pending()
        return entry  # type: ignore[return-value]

    def _corrupt_cache(self, corrupted: list[tuple[torch.Tensor, torch.Tensor]], grid: tuple[int, int]) -> None:
        """Blend the region's tokens of the just-committed chunk towards ``corrupted`` by the dose."""
        cache = self.stream.cache
        tokens = corrupted[0][0].shape[1]
        positions = self.injection.region.positions(grid)
        frames = tokens // cache.tokens_per_frame
        selected = (torch.arange(frames)[:, None] * cache.tokens_per_frame + positions[None, :]).flatten()
        start = cache.length - tokens
        for layer, (k_corrupt, v_corrupt) in enumerate(corrupted):
            keys, values = cache.committed(layer, start, cache.length)  # views: written in place
            index = selected.to(keys.device)
            keys[:, index] = blend(keys[:, index], k_corrupt[:, index], self.injection.dose)
            values[:, index] = blend(values[:, index], v_corrupt[:, index], self.injection.dose)


def install(stream: StreamBase, injection: Injection, source: torch.Tensor) -> InjectedCommit:
    """Make ``stream`` corrupt chunk ``injection.chunk`` as it commits it; returns the installed commit."""
    if not isinstance(stream, SelfForcingStream):
        raise ValueError(f"injections need a Self Forcing stream; got {type(stream).__name__}")
    commit = InjectedCommit(stream, injection, source)
    stream.commit = commit  # type: ignore[method-assign]
    return commit


class InjectedOracle(CachePolicy):
    """Knows the injection: at the first chunk after it, prunes exactly the injected token positions (from every
    cached non-sink frame, as TokenTrim prunes) and regenerates once. The best any position-pruning policy can do
    against this corruption."""

    name = "injected_oracle"
    description = "Upper bound: prune exactly the injected positions at the chunk after the injection."

    def __init__(self, injection: Injection, grid: tuple[int, int], stage: Stage = "first_step") -> None:
        super().__init__()
        self.injection = injection
        self.positions = injection.region.positions(grid)
        self._stage = stage

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def max_regenerations(self) -> int:
        return 1

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        if candidate.chunk != self.injection.chunk + 1 or candidate.attempt > 0:
            return Decision()
        return Decision(True, self.positions)


@dataclass(frozen=True)
class Inspection:
    """One inspection of a candidate: its chunk and attempt, the per-token drift from the previous accepted
    summary (``None`` for a chunk without one) and the policy's decision."""

    chunk: int
    attempt: int
    drift: torch.Tensor | None
    decision: Decision


class RecordingPolicy(ForwardingPolicy):
    """Forwards everything to ``inner`` and records every inspection (drift computed as TokenTrim defines it:
    the L2 norm of each token's summary change), so detection can be scored for any policy."""

    def __init__(self, inner: CachePolicy) -> None:
        super().__init__(inner)
        self.inspections: list[Inspection] = []

    @property
    def name(self) -> str:  # type: ignore[override]  # the recorded policy's, in the runner's messages
        return self.inner.name

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        decision = self.inner.inspect(candidate, cache)
        drift = token_drift(candidate)
        self.inspections.append(Inspection(candidate.chunk, candidate.attempt, None if drift is None else drift.cpu(),
                                           decision))  # fmt: skip
        return decision


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positive, negative = scores[labels], scores[~labels]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))
