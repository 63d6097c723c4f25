"""The drift evaluation's grid: every model x scene seed x pipeline x arm, reduced to JSON-ready summaries.

Rollouts start from ``prefill_chunks`` true chunks and run to ``horizon_multiple`` times the model's training
clip (in chunks, prefill included). Each rollout is reduced at once to per-chunk means of every measurement,
its late-horizon means (chunks at or past ``LATE_FRACTION`` of the rollout), its temporal flickering beside
the truth's, and the engine's per-chunk reports; only the example seed's frames are kept, for the strips.
Arms whose video must equal the control's (``regenerate``) are checked against it exactly (latents).
One scene's rollouts (every arm of a pipeline) are decoded together in one VAE batch: decoding dominates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_lab.arms import CONTROL, REGENERATE_ONLY, Arm, arm_names, get_arm
from drift_lab.measure import FrameMetrics, temporal_flickering
from drift_lab.rollout import (
    EVALUATION_SEED_OFFSET,
    Generated,
    LabModel,
    Rollout,
    Truth,
    chunk_first_frame,
    decode_and_measure,
    generate,
    generate_with,
    load_lab_model,
    make_truth,
    rewrite_cache_from_truth,
    run_rollout,
)
from drift_lab.world import render

# The measurements summarised per chunk and over the late horizon (FrameMetrics fields).
METRICS: tuple[str, ...] = (
    "count_error",
    "survival",
    "colour_error",
    "centroid_error",
    "background_deviation",
    "psnr",
    "psnr_background_floor",
)
# Late horizon: chunks whose index is at least this fraction of the rollout's total chunks (8x clip: 4x on).
LATE_FRACTION = 0.5
# Drift onset of a rollout: its first generated chunk whose mean object survival falls below this (the
# true-cache counterfactual rewrites the cache just before it).
ONSET_SURVIVAL = 0.9


@dataclass(frozen=True)
class ExperimentConfig:
    """What to run; ``arms`` are names per pipeline (``None``: all of them), the control always included."""

    models: tuple[str, ...]
    seeds: int = 32
    horizon_multiple: int = 8
    pipelines: tuple[str, ...] = ("self_forcing", "rolling_forcing")
    arms: tuple[str, ...] | None = None
    prefill_chunks: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    # Arms outside the table (e.g. a policy under test on the scorecard), run after the table's on their pipeline.
    extra_arms: tuple[Arm, ...] = ()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model folder")
        names = [Path(model).name for model in self.models]  # a model's name in every table is its folder's
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"models must have distinct folder names; {twice!r} appears twice")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1; got {self.seeds}")
        if self.horizon_multiple < 1:
            raise ValueError(f"horizon_multiple must be >= 1; got {self.horizon_multiple}")
        if self.prefill_chunks < 1:
            raise ValueError(f"prefill_chunks must be >= 1; got {self.prefill_chunks}")
        self.arms_for_all()  # unknown pipelines or arms fail here, before any work

    def arms_for(self, pipeline: str) -> list[Arm]:
        """The arms run on ``pipeline``: the control first, then the requested ones that pipeline has."""
        names = arm_names(pipeline)
        wanted = names if self.arms is None else [CONTROL, *(name for name in self.arms if name in names)]
        extra = [arm for arm in self.extra_arms if arm.pipeline == pipeline]
        return [*(get_arm(pipeline, name) for name in dict.fromkeys(wanted)), *extra]

    def arms_for_all(self) -> dict[str, list[Arm]]:
        known = {name for pipeline in self.pipelines for name in arm_names(pipeline)}
        unknown = sorted(set(self.arms or ()) - known)
        if unknown:
            raise ValueError(f"arms {unknown} exist on none of the pipelines {list(self.pipelines)}")
        return {pipeline: self.arms_for(pipeline) for pipeline in self.pipelines}


@dataclass
class RolloutSummary:
    """One rollout reduced to what the report needs (JSON-ready through :func:`dataclasses.asdict`)."""

    model: str
    pipeline: str
    arm: str
    seed: int
    chunk_indices: list[int]
    chunk_start_frames: list[int]
    chunk_metrics: dict[str, list[float]]
    late: dict[str, float]
    flickering: float
    truth_flickering: float
    triggered: list[bool]
    regenerations: list[int]
    tokens_removed: list[int]
    chunk_seconds: list[float]
    equals_control: bool | None = None
    onset: int | None = None  # the true-cache counterfactual: the chunk the cache was rewritten before

    @property
    def pair(self) -> tuple[str, int]:
        return (self.model, self.seed)


@dataclass
class ExperimentResult:
    """Every summary, the models' records, the example strips' frames, and how long it took."""

    config: ExperimentConfig
    models: dict[str, dict[str, Any]]
    summaries: list[RolloutSummary]
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # "pipeline/arm" and "truth" -> frames
    example: dict[str, Any] = field(default_factory=dict)  # model, seed, start frame of the example
    seconds: float = 0.0

    def select(self, pipeline: str, arm: str) -> list[RolloutSummary]:
        return [s for s in self.summaries if s.pipeline == pipeline and s.arm == arm]

    def config_json(self) -> dict[str, Any]:
        """The config, its extra arms by key (they carry their policy factory)."""
        config = asdict(dataclasses.replace(self.config, extra_arms=()))
        return {**config, "extra_arms": [arm.key for arm in self.config.extra_arms]}

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config_json(),
            "models": self.models,
            "seconds": self.seconds,
            "example": self.example,
            "rollouts": [asdict(summary) for summary in self.summaries],
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def summarise(model: str, rollout: Rollout, truth: Truth, total_chunks: int) -> RolloutSummary:
    """Reduce a rollout: per-chunk and late-horizon means of :data:`METRICS`, flickering, engine reports."""
    metrics: FrameMetrics = rollout.metrics
    generated = rollout.generated
    count = rollout.frames.shape[0]
    starts = [chunk_first_frame(record.index) for record in generated.chunks]
    ends = [*starts[1:], rollout.start_frame + count]
    late_from = math.ceil(LATE_FRACTION * total_chunks)
    late_frames = np.zeros(count, dtype=bool)
    chunk_metrics: dict[str, list[float]] = {name: [] for name in METRICS}
    for record, start, end in zip(generated.chunks, starts, ends, strict=True):
        frames = slice(start - rollout.start_frame, end - rollout.start_frame)
        late_frames[frames] = record.index >= late_from
        for name in METRICS:
            chunk_metrics[name].append(_nanmean(np.asarray(getattr(metrics, name))[frames]))
    late = {name: _nanmean(np.asarray(getattr(metrics, name))[late_frames]) for name in METRICS}
    true_frames = render(truth.scene, rollout.start_frame, count)
    return RolloutSummary(
        model=model,
        pipeline=generated.pipeline,
        arm=generated.arm,
        seed=generated.seed,
        chunk_indices=[record.index for record in generated.chunks],
        chunk_start_frames=starts,
        chunk_metrics=chunk_metrics,
        late=late,
        flickering=temporal_flickering(rollout.frames),
        truth_flickering=temporal_flickering(true_frames),
        triggered=[record.triggered for record in generated.chunks],
        regenerations=[record.regenerations for record in generated.chunks],
        tokens_removed=[record.tokens_removed for record in generated.chunks],
        chunk_seconds=[record.chunk_seconds for record in generated.chunks],
    )


# What the report keeps of a model's training.json (its loss history and preset values stay in the folder).
TRAINING_SUMMARY_KEYS = ("command", "seed", "data_version", "clip_chunks", "vae_steps", "steps", "losses",
                         "wall_seconds", "device")  # fmt: skip


def model_record(model: LabModel) -> dict[str, Any]:
    """What the report says about a model: size, frame size, training horizon and a summary of its training."""
    parameters = sum(p.numel() for p in model.bundle.transformer.parameters())
    training = {key: model.metadata[key] for key in TRAINING_SUMMARY_KEYS if key in model.metadata}
    preset = model.metadata.get("preset")
    training["preset"] = preset.get("name") if isinstance(preset, dict) else preset
    return {
        "name": model.name,
        "transformer_parameters": int(parameters),
        "default_size": list(model.bundle.default_size),
        "clip_chunks": model.clip_chunks,
        "world": model.world.as_dict(),
        "pipeline_options": {p: model.options(p) for p in ("self_forcing", "rolling_forcing")},
        "training": training,
        "gate": model.metadata.get("gate"),  # as drift_lab.gate --record wrote it, if it did
    }


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Counter:
    """Progress lines: rollout counter, where in the grid, elapsed time."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.started = time.perf_counter()

    def tick(self, where: str) -> None:
        self.done += 1
        self.progress(f"[{self.done}/{self.total}] {where}  {time.perf_counter() - self.started:.1f} s")


@dataclass(frozen=True)
class Shard:
    """A block of one model's scene seeds: the unit of work one process runs."""

    model_number: int
    seeds: range


def shards(config: ExperimentConfig, jobs: int) -> list[Shard]:
    """The grid in model-major, seed-minor order, each model's seeds split into ``jobs`` contiguous blocks."""
    parts = min(config.seeds, jobs)
    bounds = [round(part * config.seeds / parts) for part in range(parts + 1)]
    return [
        Shard(number, range(bounds[part], bounds[part + 1]))
        for number in range(len(config.models))
        for part in range(parts)
    ]


def run_experiment(
    config: ExperimentConfig, progress: Progress = _stderr, jobs: int = 1, threads: int | None = None
) -> ExperimentResult:
    """Run the grid; ``progress`` receives one line per rollout (counter, position, elapsed).

    With ``jobs`` > 1 the grid's shards (:func:`shards`) run in that many processes of ``threads`` torch threads
    each (default 1) and their lines go to stderr; the result is the one a single process of as many threads
    returns, rollout for rollout (every rollout is seeded by its scene), except for wall times, which then
    share the CPU.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    started = time.perf_counter()
    work = shards(config, jobs)
    if jobs == 1:
        parts = [run_shard(config, shard, progress) for shard in work]
    else:
        context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
        with ProcessPoolExecutor(jobs, context, initializer=apply_threads, initargs=(threads or 1,)) as pool:
            parts = list(pool.map(run_shard, [config] * len(work), work))
    result = ExperimentResult(config, {}, [])
    for part in parts:
        result.models.update(part.models)
        result.summaries += part.summaries
        result.examples.update(part.examples)
        result.example = result.example or part.example
    result.seconds = time.perf_counter() - started
    return result


def run_shard(config: ExperimentConfig, shard: Shard, progress: Progress = _stderr) -> ExperimentResult:
    """One model's rollouts on the scene seeds of ``shard`` (the example strips' when it holds the first)."""
    arms = config.arms_for_all()
    result = ExperimentResult(config, {}, [])
    counter = _Counter(len(shard.seeds) * sum(map(len, arms.values())), progress)
    model = load_lab_model(config.models[shard.model_number], device=config.device, dtype=config.dtype)
    result.models[model.name] = model_record(model)
    total = config.horizon_multiple * model.clip_chunks
    if total <= config.prefill_chunks:
        raise ValueError(f"horizon of {total} chunks leaves nothing to generate after {config.prefill_chunks}")
    _warm_up(model, arms, config.prefill_chunks)
    # Encode the whole truth only for arms that compare with it; the prefill needs its first chunks only.
    encoded = total if any(arm.needs_truth for a in arms.values() for arm in a) else config.prefill_chunks
    for number in shard.seeds:
        truth = make_truth(model, EVALUATION_SEED_OFFSET + number, encoded)
        keep = shard.model_number == 0 and number == 0  # the example strips' rollouts
        if keep:
            _keep_truth(result, model, truth, config.prefill_chunks, total)
        where = f"model {shard.model_number + 1}/{len(config.models)} seed {number + 1}/{config.seeds}"
        for pipeline_arms in arms.values():
            rollouts = _run_arms(result, model, truth, pipeline_arms, config.prefill_chunks, total, counter, where)
            if keep:
                result.examples.update({f"{r.generated.pipeline}/{r.generated.arm}": r.frames for r in rollouts})
    result.seconds = time.perf_counter() - counter.started
    return result


def _warm_up(model: LabModel, arms: dict[str, list[Arm]], prefill: int) -> None:
    """One short untimed rollout per pipeline, so one-off start-up costs do not land in the first timed one."""
    truth = make_truth(model, EVALUATION_SEED_OFFSET, prefill)
    for pipeline_arms in arms.values():
        run_rollout(model, pipeline_arms[0], truth, prefill, 1)


def _keep_truth(result: ExperimentResult, model: LabModel, truth: Truth, prefill: int, total: int) -> None:
    start = chunk_first_frame(prefill)
    result.examples["truth"] = render(truth.scene, start, chunk_first_frame(total) - start)
    result.example = {"model": model.name, "seed": truth.seed, "start_frame": start, "caption": truth.scene.caption}


def _run_arms(
    result: ExperimentResult,
    model: LabModel,
    truth: Truth,
    arms: Sequence[Arm],
    prefill: int,
    total: int,
    counter: _Counter,
    where: str,
) -> list[Rollout]:
    """One pipeline's arms on one scene: generate each, decode them in one batch, summarise; returns the rollouts.

    An arm that runs the same policy as one already run (``same_as``) is copied, not run again. A generation
    whose latents equal the control's (always so for the regenerate-only arms, whose equality is recorded) is
    not decoded again: its frames and measurements are the control's, its engine reports its own.
    """
    generations: dict[str, Generated] = {}
    for arm in arms:
        if arm.counterfactual:
            continue  # after the control is measured
        if arm.same_as not in generations:
            generations[arm.name] = generate(model, arm, truth, prefill, total - prefill)
        counter.tick(f"{where} {arm.key}")
    control = generations.get(CONTROL)
    twins = {name for name, g in generations.items() if control is not None and name != CONTROL
             and same_latents(g, control)}  # fmt: skip
    decoded = [name for name in generations if name not in twins]
    rollouts = dict(zip(decoded, decode_and_measure(model, truth, [generations[n] for n in decoded]), strict=True))
    for name in twins:
        rollouts[name] = dataclasses.replace(rollouts[CONTROL], generated=generations[name])
    onsets = {}
    for arm in (arm for arm in arms if arm.counterfactual):
        rollouts[arm.name], onsets[arm.name] = _counterfactual(model, truth, arm, rollouts.get(CONTROL), prefill, total)
        counter.tick(f"{where} {arm.key}")
    for arm in arms:
        summary = summarise(model.name, rollouts[arm.name if arm.name in rollouts else arm.same_as], truth, total)
        summary.arm = arm.name
        summary.onset = onsets.get(arm.name)
        if arm.name in REGENERATE_ONLY and control is not None:
            summary.equals_control = arm.name in twins
        result.summaries.append(summary)
    return list(rollouts.values())


def drift_onset(rollout: Rollout, prefill: int) -> int | None:
    """The first generated chunk after the first whose mean object survival is below :data:`ONSET_SURVIVAL`
    (``None``: it never drifts that far). The first generated chunk cannot be the onset: its cache holds only
    true chunks already."""
    survival = np.asarray(rollout.metrics.survival, dtype=np.float64)
    offset = rollout.start_frame
    for record in rollout.generated.chunks:
        if record.index <= prefill:
            continue
        start = chunk_first_frame(record.index) - offset
        end = chunk_first_frame(record.index + 1) - offset
        values = survival[start:end]
        values = values[np.isfinite(values)]
        if values.size and values.mean() < ONSET_SURVIVAL:
            return record.index
    return None


def _counterfactual(
    model: LabModel, truth: Truth, arm: Arm, control: Rollout | None, prefill: int, total: int
) -> tuple[Rollout, int | None]:
    """The true-cache counterfactual of the control's rollout: rewritten at its drift onset (the control's own
    rollout when it never drifts)."""
    if control is None:
        raise ValueError(f"arm {arm.name!r} needs the control {CONTROL!r} in the same run")
    onset = drift_onset(control, prefill)
    if onset is None:
        return dataclasses.replace(control, generated=dataclasses.replace(control.generated, arm=arm.name)), None
    policy = arm.create_policy(truth.latents)
    generated = generate_with(model, arm.pipeline, arm.name, policy, truth, prefill, total - prefill,
                              after_chunk=rewrite_cache_from_truth(truth, onset))  # fmt: skip
    return decode_and_measure(model, truth, [generated])[0], onset


def same_latents(generated: Generated, control: Generated) -> bool:
    """Whether two generations are bit-identical (the frames then are too: one decoder, one input)."""
    return generated.latents.shape == control.latents.shape and torch.equal(generated.latents, control.latents)


def apply_threads(threads: int | None) -> None:
    """A command's ``--threads``: torch's CPU threads (``None``: torch's default); exits on a bad value."""
    if threads is None:
        return
    if threads < 1:
        raise SystemExit("error: --threads must be >= 1")
    torch.set_num_threads(threads)


def json_ready(value: Any) -> Any:
    """Floats to 6 significant digits (NaN and infinities to null), recursively: compact, valid JSON."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def write_json(result: ExperimentResult, path: Path, extra: dict[str, Any]) -> None:
    """The raw per-seed results (every rollout summary, one per line) with ``extra`` (command, date, ...)."""
    payload = json_ready({**extra, **result.as_json()})
    rollouts = payload.pop("rollouts")
    head = json.dumps(payload, indent=1)[: -len("\n}")]
    body = ",\n".join("  " + json.dumps(rollout, separators=(",", ":")) for rollout in rollouts)
    path.write_text(f'{head},\n "rollouts": [\n{body}\n ]\n}}\n')
