"""Helpers shared by the cache-policy tests: a tiny causal model, streams, and policies that obey orders."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import TINY_TEXT_DIM, TINY_TEXT_LEN, tiny_transformer_config
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.rolling_forcing import RollingForcingOptions, RollingForcingPipeline
from tokentrim_server.pipelines.self_forcing import SelfForcingOptions, SelfForcingPipeline
from tokentrim_server.policies import AcceptedChunk, CacheHandle, CachePolicy, Candidate, Decision, Stage

REFERENCE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "reference"
LATENT_SHAPE = (16, 8, 12)  # 24 tokens per latent frame, as in the reference cases


@contextlib.contextmanager
def installed_distribution(
    root: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, group: str, entry: str
) -> Iterator[None]:
    """While active, package ``module`` is installed as ``pip install`` would leave it in ``root``: the package
    plus a ``.dist-info`` naming the entry point ``entry`` (``name = module:attr``) in ``group``."""
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    distribution = module.replace("_", "-")
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        yield
    finally:
        sys.modules.pop(module, None)


def tiny_model(seed: int = 0) -> CausalWanTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = WanTransformer3DModel.from_config(tiny_transformer_config()).eval()
    return CausalWanTransformer(base, text_len=TINY_TEXT_LEN)


def prompt(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 10, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def self_forcing_stream(model: CausalWanTransformer, blocks: int, seed: int = 3, **options):
    pipeline = SelfForcingPipeline(model, SelfForcingOptions(**options))
    return pipeline.open(prompt(), LATENT_SHAPE, SeededNoise(seed), blocks)


def rolling_stream(model: CausalWanTransformer, blocks: int, seed: int = 3, **options):
    pipeline = RollingForcingPipeline(model, RollingForcingOptions(**options))
    return pipeline.open(prompt(), LATENT_SHAPE, SeededNoise(seed), blocks)


@dataclass
class Seen:
    """What a scripted policy was shown."""

    candidates: list[Candidate] = field(default_factory=list)
    accepted: list[AcceptedChunk] = field(default_factory=list)
    started: int = 0
    ended: int = 0


class ScriptedPolicy(CachePolicy):
    """Triggers on the chunks in ``trigger_chunks`` (every attempt), pruning ``positions``; records everything."""

    name = "scripted"

    def __init__(
        self,
        positions: list[int],
        trigger_chunks: set[int] | None = None,
        stage: Stage = "first_step",
        max_regenerations: int = 1,
    ) -> None:
        super().__init__()
        self.positions = torch.tensor(positions, dtype=torch.long)
        self.trigger_chunks = trigger_chunks
        self._stage: Stage = stage
        self._max_regenerations = max_regenerations
        self.seen = Seen()

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def max_regenerations(self) -> int:
        return self._max_regenerations

    def start(self, session) -> None:
        self.seen.started += 1

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        self.seen.candidates.append(candidate)
        trigger = self.trigger_chunks is None or candidate.chunk in self.trigger_chunks
        return Decision(trigger and candidate.previous is not None, self.positions, 1.0, 0.5)

    def accepted(self, chunk: AcceptedChunk) -> None:
        self.seen.accepted.append(chunk)

    def end(self) -> None:
        self.seen.ended += 1
