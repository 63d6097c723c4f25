"""Reference cases recorded from the official pipelines (see ``shared/reference/README.md``): test support.

A case folder holds ``config.json`` (original Wan format), ``checkpoint.pt`` (a distilled checkpoint),
``case.json`` (pipeline options, and for LongLive a prompt-switch schedule) and ``tensors.safetensors``
(prompt embeddings, one per prompt, keyed noise, expected latents). Loading goes through the same code a user's
real checkpoint goes through.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokentrim_server.loading.checkpoints import (
    build_transformer,
    load_weights,
    normalize_keys,
    read_state_dict,
    read_transformer_config,
)
from tokentrim_server.models.causal_wan import CausalWanTransformer, TextContext
from tokentrim_server.pipelines.base import Chunk, PipelineBase, StreamBase
from tokentrim_server.pipelines.noise import ReplayNoise
from tokentrim_server.pipelines.registry import build_pipeline

# case.json keys that describe the run rather than pipeline options.
_RUN_KEYS = {
    "pipeline",
    "num_latent_frames",
    "latent_shape",
    "text_len",
    "checkpoint_key",
    "dtype",
    "tolerance",
    "prompt_switches",
}


@dataclass(frozen=True)
class PromptSwitch:
    """Use prompt ``prompt_index`` from the first block whose start frame is >= ``frame`` (official semantics)."""

    frame: int
    prompt_index: int


@dataclass
class ReferenceCase:
    name: str
    case: dict
    tensors: dict[str, torch.Tensor]
    model: CausalWanTransformer

    @property
    def tolerance(self) -> float:
        return float(self.case["tolerance"])

    @property
    def num_blocks(self) -> int:
        return self.case["num_latent_frames"] // self.case["frames_per_block"]

    def pipeline(self) -> PipelineBase:
        options = {k: v for k, v in self.case.items() if k not in _RUN_KEYS}
        if self.case["pipeline"] == "rolling_forcing":
            options.pop("sink_frames", None)  # the sink is the first block by construction
        return build_pipeline(self.case["pipeline"], self.model, options)

    @property
    def switches(self) -> list[PromptSwitch]:
        return [PromptSwitch(**switch) for switch in self.case.get("prompt_switches", [])]

    def prompt(self, index: int) -> torch.Tensor:
        """Prompt ``index``'s embeddings ``[1, L, text_dim]`` (cases stack every prompt on dim 0)."""
        return self.tensors["prompt_embeds"][index : index + 1]

    def open(self, pipeline: PipelineBase | None = None) -> StreamBase:
        pipeline = pipeline or self.pipeline()
        shape = tuple(self.case["latent_shape"])
        return pipeline.open(self.prompt(0), shape, ReplayNoise(self.tensors), self.num_blocks)

    def run(self) -> torch.Tensor:
        """All chunks of the case concatenated, ``[1, F, C, H, W]``, switching prompts on the case's schedule."""
        texts = [self.model.encode_text(self.prompt(i)) for i in range(self.tensors["prompt_embeds"].shape[0])]
        return run_with_switches(self.open(), texts, self.switches)


def run_with_switches(
    stream: StreamBase, texts: Sequence[TextContext], switches: Sequence[PromptSwitch]
) -> torch.Tensor:
    """Every chunk of ``stream`` concatenated; ``texts[0]`` is the stream's own, ``switches`` are sorted by frame.

    As in the official loop, a block boundary applies at most one switch: the next one, once the block's start
    frame has reached it; the stream re-encodes its cache in its own recache mode.
    """
    pending = deque(switches)
    chunks: list[Chunk] = []
    while not stream.done:
        if pending and stream.emitted * stream.frames_per_block >= pending[0].frame:
            stream.recache(texts[pending.popleft().prompt_index], chunks)
        chunks.append(stream.next_chunk())
    return torch.cat([chunk.latents for chunk in chunks], dim=1)


def load_case(folder: str | Path, checkpoint_key: str | None = None) -> ReferenceCase:
    """Load a case; ``checkpoint_key`` overrides the weight set named in ``case.json``."""
    folder = Path(folder)
    case = json.loads((folder / "case.json").read_text())
    if checkpoint_key is not None:
        case["checkpoint_key"] = checkpoint_key
    config, text_len = read_transformer_config(folder / "config.json")
    base = build_transformer(config)
    load_weights(base, normalize_keys(read_state_dict(folder / "checkpoint.pt", case.get("checkpoint_key"))))
    model = CausalWanTransformer(base, int(case.get("text_len", text_len)))
    return ReferenceCase(folder.name, case, load_file(str(folder / "tensors.safetensors")), model.eval())
