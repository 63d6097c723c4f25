"""The injection suite: every scenario x dose x arm on scene seeds, measured against the uncorrupted twin.

For one model and scene seed, the *twin* is the plain pipeline's rollout without any injection; every other
rollout of that seed uses the same scene, prefill and keyed noise, so its difference from the twin is what the
corruption and the policy did. Per rollout it keeps: the latent divergence from the twin per generated chunk
(mean squared difference), which chunks triggered, the positions pruned at the first trigger after the
injection, and the per-token drift the policy's candidate showed at the chunk after the injection (for the
ROC AUC of drift as a detector of the injected positions). A subset of seeds is also decoded, at the highest
dose, for the pixel divergence (PSNR against the twin's frames).

Only Self Forcing takes injections (see :mod:`drift_lab.injection`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from drift_lab.arms import CONTROL, get_arm
from drift_lab.injection import (
    KINDS,
    TARGETS,
    InjectedOracle,
    Injection,
    RecordingPolicy,
    Region,
    corruption_source,
    install,
    roc_auc,
    token_grid,
)
from drift_lab.measure import psnr
from drift_lab.model import FRAMES_PER_BLOCK
from drift_lab.rollout import (
    EVALUATION_SEED_OFFSET,
    Generated,
    LabModel,
    Truth,
    chunk_first_frame,
    decode_after_truth,
    generate_with,
    load_lab_model,
    make_truth,
)
from tokentrim_server.policies import CachePolicy, create_policy

PIPELINE = "self_forcing"
SCENARIOS: tuple[str, ...] = tuple(f"{target}_{kind}" for target in TARGETS for kind in KINDS)
ORACLE = "injected_oracle"
# Arms of the suite, control first; ``regenerate`` checks that regenerating alone changes nothing.
ARMS: tuple[str, ...] = (CONTROL, "tokentrim", "tokentrim_final", "random", ORACLE, "regenerate")
# A trigger counts as a response to the injection when it happens within this many chunks after it.
RESPONSE_CHUNKS = 2

PolicyMaker = Callable[[Injection | None, tuple[int, int]], CachePolicy]
"""A fresh policy for one rollout, given the injection (``None`` on a clean run) and the token grid."""


def arm_policy(name: str) -> PolicyMaker:
    """The policy maker of a suite arm (the oracle needs the injection; on a clean run it never triggers)."""
    if name == ORACLE:
        return lambda injection, grid: (
            InjectedOracle(injection, grid) if injection is not None else create_policy(CONTROL)
        )
    arm = get_arm(PIPELINE, name)
    return lambda injection, grid: arm.create_policy()


def registry_policy(name: str, params: Mapping[str, Any]) -> PolicyMaker:
    """A policy maker for any installed cache policy with parameters (the scorecard's candidate)."""
    create_policy(name, params)  # unknown names and bad parameters fail here, before any work
    return lambda injection, grid: create_policy(name, params)


@dataclass(frozen=True)
class InjectionConfig:
    """What to run. ``chunk`` is the injected chunk (after ``prefill_chunks`` true ones), ``after`` the chunks
    generated after it; ``region`` is in token rows/columns (the default: two tokens, TokenTrim's budget at
    p = 0.1 on a 4x4 grid); ``decode_seeds`` the seeds decoded for pixel divergence."""

    models: tuple[str, ...]
    seeds: int = 16
    scenarios: tuple[str, ...] = SCENARIOS
    doses: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    arms: tuple[str, ...] = ARMS
    chunk: int = 4
    after: int = 6
    region: Region = field(default_factory=lambda: Region(1, 1, 1, 2))
    prefill_chunks: int = 1
    decode_seeds: int = 4

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model folder")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1; got {self.seeds}")
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"scenarios must be among {', '.join(SCENARIOS)}; got {unknown}")
        if not self.doses or any(not 0.0 <= dose <= 1.0 for dose in self.doses):
            raise ValueError(f"doses must be a non-empty list of values in [0, 1]; got {list(self.doses)}")
        if self.chunk < self.prefill_chunks:
            raise ValueError(f"chunk must be >= prefill_chunks ({self.prefill_chunks}); got {self.chunk}")
        if self.after < 1:
            raise ValueError(f"after must be >= 1; got {self.after}")
        if CONTROL not in self.arms:
            raise ValueError(f"arms must include the control {CONTROL!r}")

    @property
    def total_chunks(self) -> int:
        return self.chunk + 1 + self.after


@dataclass
class InjectionRollout:
    """One rollout of the suite, reduced (JSON-ready)."""

    model: str
    seed: int
    scenario: str  # "clean" for the uncorrupted runs
    dose: float
    arm: str
    chunks: list[int]
    divergence: list[float]  # latent MSE vs the twin, per generated chunk
    pixel_psnr: list[float] | None  # dB vs the twin's frames, per generated chunk (decoded seeds only)
    triggered: list[bool]
    pruned: list[int] | None  # positions pruned at the first trigger within RESPONSE_CHUNKS after the chunk
    drift: list[float] | None  # per-token drift of the first candidate of the chunk after the injection
    seconds: float
    equals_twin: bool
    digest: str  # of the generated latents: equal digests, bit-identical videos


@dataclass
class InjectionResult:
    config: InjectionConfig
    region_positions: dict[str, list[int]]  # model -> injected positions
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> token rows, columns
    rollouts: list[InjectionRollout] = field(default_factory=list)
    seconds: float = 0.0
    # The first model's first seed at the top dose, decoded: "twin" and "scenario/arm" -> uint8 [T, H, W, 3].
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)  # model, seed, first generated world frame

    def as_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "region_positions": self.region_positions,
            "grids": self.grids,
            "seconds": self.seconds,
            "rollouts": [asdict(rollout) for rollout in self.rollouts],
        }


def latent_divergence(generated: torch.Tensor, twin: torch.Tensor) -> list[float]:
    """Mean squared difference per chunk of two generated latent videos ``[1, F, C, h, w]``."""
    squared = (generated.float() - twin.float()).square()
    return [float(chunk.mean()) for chunk in squared.split(FRAMES_PER_BLOCK, dim=1)]


def _response(
    recorder: RecordingPolicy, injection: Injection | None, chunk: int
) -> tuple[list[int] | None, list[float] | None]:
    """Positions pruned at the first trigger within RESPONSE_CHUNKS after ``chunk``, and the first candidate's
    drift at ``chunk + 1`` (what a detector saw of the injection)."""
    pruned, drift = None, None
    for inspection in recorder.inspections:
        if inspection.chunk == chunk + 1 and inspection.attempt == 0 and inspection.drift is not None:
            drift = [float(value) for value in inspection.drift]
        within = chunk < inspection.chunk <= chunk + RESPONSE_CHUNKS
        decision = inspection.decision
        if pruned is None and within and decision.triggered and decision.positions is not None:
            pruned = sorted(int(position) for position in decision.positions)
    return pruned, drift


class _Suite:
    """Runs the grid for one model; keeps the twin of each seed."""

    def __init__(self, config: InjectionConfig, model: LabModel, makers: Mapping[str, PolicyMaker]) -> None:
        self.config = config
        self.model = model
        self.makers = makers
        latent = model.bundle.latent_shape(model.world.height, model.world.width)
        self.grid = token_grid(latent[1:], model.bundle.transformer.patch_size)

    def rollout(
        self, truth: Truth, arm: str, injection: Injection | None, source: torch.Tensor | None
    ) -> tuple[Generated, RecordingPolicy]:
        config = self.config
        recorder = RecordingPolicy(self.makers[arm](injection, self.grid))

        def setup(stream: Any) -> None:
            if injection is not None and source is not None:
                install(stream, injection, source)

        generated = generate_with(
            self.model, PIPELINE, arm, recorder, truth, config.prefill_chunks,
            config.total_chunks - config.prefill_chunks, setup,
        )  # fmt: skip
        return generated, recorder

    def reduce(
        self,
        seed: int,
        scenario: str,
        dose: float,
        arm: str,
        generated: Generated,
        recorder: RecordingPolicy,
        twin: Generated,
        injection: Injection | None,
    ) -> InjectionRollout:
        pruned, drift = _response(recorder, injection, self.config.chunk)
        return InjectionRollout(
            model=self.model.name,
            seed=seed,
            scenario=scenario,
            dose=dose,
            arm=arm,
            chunks=[record.index for record in generated.chunks],
            divergence=latent_divergence(generated.latents, twin.latents),
            pixel_psnr=None,
            triggered=[record.triggered for record in generated.chunks],
            pruned=pruned,
            drift=drift,
            seconds=sum(record.chunk_seconds for record in generated.chunks),
            equals_twin=torch.equal(generated.latents, twin.latents),
            digest=hashlib.sha256(generated.latents.float().contiguous().numpy().tobytes()).hexdigest()[:16],
        )


def run_injection_suite(
    config: InjectionConfig,
    makers: Mapping[str, PolicyMaker] | None = None,
    progress: Callable[[str], None] = print,
) -> InjectionResult:
    """Run every model x seed x (clean + scenario x dose) x arm; ``makers`` adds or replaces arms by name."""
    makers = {**{name: arm_policy(name) for name in config.arms}, **(makers or {})}
    result = InjectionResult(config, {})
    started = time.perf_counter()
    for entry in config.models:
        model = load_lab_model(entry)
        suite = _Suite(config, model, makers)
        result.region_positions[model.name] = config.region.positions(suite.grid).tolist()
        result.grids[model.name] = suite.grid
        for number in range(config.seeds):
            truth = make_truth(model, EVALUATION_SEED_OFFSET + number, config.prefill_chunks)
            _run_seed(suite, truth, number, result)
            progress(f"[injection] {model.name} seed {number + 1}/{config.seeds} {time.perf_counter() - started:.0f} s")
    result.seconds = time.perf_counter() - started
    return result


def _run_seed(suite: _Suite, truth: Truth, number: int, result: InjectionResult) -> None:
    config = suite.config
    twin, twin_recorder = suite.rollout(truth, CONTROL, None, None)
    decoded: dict[str, Generated] = {}
    keep_pixels = number < config.decode_seeds
    for arm in suite.makers:
        generated, recorder = (twin, twin_recorder) if arm == CONTROL else suite.rollout(truth, arm, None, None)
        result.rollouts.append(suite.reduce(truth.seed, "clean", 0.0, arm, generated, recorder, twin, None))
    top = max(config.doses)
    for scenario in config.scenarios:
        target, kind = scenario.split("_")
        template = Injection(target, kind, config.chunk, config.region, 1.0)  # type: ignore[arg-type]
        source = corruption_source(suite.model, truth, template)
        for dose in config.doses:
            injection = Injection(template.target, template.kind, config.chunk, config.region, dose)
            for arm in suite.makers:
                generated, recorder = suite.rollout(truth, arm, injection, source)
                rollout = suite.reduce(truth.seed, scenario, dose, arm, generated, recorder, twin, injection)
                result.rollouts.append(rollout)
                if keep_pixels and dose == top:
                    decoded[f"{scenario}/{arm}"] = generated
    if keep_pixels and decoded:
        _pixel_divergence(suite.model, truth, twin, decoded, result)


def _pixel_divergence(
    model: LabModel, truth: Truth, twin: Generated, decoded: dict[str, Generated], result: InjectionResult
) -> None:
    """Decode the twin and the top-dose rollouts of one seed in one batch; PSNR vs the twin per chunk."""
    names = list(decoded)
    latents = torch.cat([twin.latents, *(decoded[name].latents for name in names)])
    videos = decode_after_truth(model, truth, twin.prefill_chunks, latents)
    frames_per_chunk = videos.shape[1] // (latents.shape[1] // FRAMES_PER_BLOCK)
    if not result.examples:
        result.examples = {"twin": videos[0], **{name: videos[i] for i, name in enumerate(names, start=1)}}
        start = chunk_first_frame(twin.prefill_chunks)
        result.example = {"model": model.name, "seed": truth.seed, "start_frame": start}
    top = max(result.config.doses)
    by_key = {(r.seed, r.scenario, r.arm): r for r in result.rollouts if r.model == model.name and r.dose == top}
    for index, name in enumerate(names, start=1):
        scenario, arm = name.split("/")
        values = []
        for start in range(0, videos.shape[1], frames_per_chunk):
            frames = slice(start, start + frames_per_chunk)
            values.append(psnr(videos[index, frames], videos[0, frames]))
        by_key[(truth.seed, scenario, arm)].pixel_psnr = values


# ---------------------------------------------------------------------------------------------- analysis
def select(result: InjectionResult, scenario: str, arm: str, dose: float | None = None) -> list[InjectionRollout]:
    return [r for r in result.rollouts if r.scenario == scenario and r.arm == arm and (dose is None or r.dose == dose)]


def later_divergence(rollout: InjectionRollout, chunk: int) -> float:
    """Mean latent divergence over the chunks after the injected one (what was copied forward)."""
    values = [d for index, d in zip(rollout.chunks, rollout.divergence, strict=True) if index > chunk]
    return float(np.mean(values)) if values else math.nan


def trigger_rate(rollouts: Sequence[InjectionRollout], chunk: int) -> float:
    """Fraction of rollouts that triggered within RESPONSE_CHUNKS after ``chunk``."""
    if not rollouts:
        return math.nan
    hits = [any(t for index, t in zip(r.chunks, r.triggered, strict=True) if chunk < index <= chunk + RESPONSE_CHUNKS)
            for r in rollouts]  # fmt: skip
    return float(np.mean(hits))


def precision_recall(rollouts: Sequence[InjectionRollout], positions: Sequence[int]) -> tuple[float, float, int]:
    """Mean precision and recall of the pruned sets against the injected positions, over rollouts that pruned."""
    truth = set(positions)
    pairs = [(len(set(r.pruned) & truth) / len(r.pruned), len(set(r.pruned) & truth) / len(truth))
             for r in rollouts if r.pruned]  # fmt: skip
    if not pairs:
        return math.nan, math.nan, 0
    precision, recall = np.mean(pairs, axis=0)
    return float(precision), float(recall), len(pairs)


def drift_auc(rollouts: Sequence[InjectionRollout], positions: Sequence[int]) -> float:
    """Mean over rollouts of the ROC AUC of per-token drift for the injected positions."""
    values = []
    for rollout in rollouts:
        if rollout.drift is None:
            continue
        labels = np.zeros(len(rollout.drift), dtype=bool)
        labels[list(positions)] = True
        values.append(roc_auc(np.asarray(rollout.drift), labels))
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan
