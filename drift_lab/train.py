"""Train a lab model: the autoencoder, then the causal transformer; write the model folder.

``python -m drift_lab.train --preset smoke --seed 0 --out FOLDER`` runs both stages (see
``drift_lab.training_vae`` and ``drift_lab.training_transformer``) and writes a diffusers folder that the
server's ``load_model`` reads, plus ``training.json`` (command, seed, preset, world data version, losses,
wall time) and ``MODEL_CARD.md``. Runs are reproducible on a CPU: the seed fixes the weights' initialisation,
the training scenes and every noise draw, so one seed (with one thread count: float reductions are split
by thread) gives the same weights every time.

Long runs go in stages, so that one autoencoder, gated on its own (``python -m drift_lab.gate --vae-only``),
serves several transformer seeds:

* ``--stage vae --out VAE``: the autoencoder alone, into ``VAE/vae`` with ``VAE/training.json``;
* ``--stage decoder --vae-from VAE --out VAE2``: stage 1b, the decoder fine-tuned on clips of the whole
  training clip with the encoder frozen (``drift_lab.training_decoder``), into ``VAE2`` laid out as ``VAE``;
  the latents are unchanged, so ``python -m drift_lab.training_decoder VAE2 MODEL...`` installs it into
  models already trained on ``VAE``;
* ``--stage transformer --vae-from VAE --out MODEL``: a transformer on that autoencoder's latents, into a
  full model folder. Its scenes and noise come from its own seed, so it does not reproduce a one-shot run.
  With ``--init-from MODEL0`` it is a fine-tune: it starts from ``MODEL0``'s transformer and text encoder
  (same architecture, world and encoder) and trains with the preset's training settings (e.g. another loss
  weighting); ``training.json`` records ``init_from`` and counts ``MODEL0``'s time as stage ``init``.

A staged run writes ``OUT/checkpoint.pt`` every ``--checkpoint-minutes``, after ``--stop-after`` steps of
this invocation, and at the end. Each time, stage 1 rewrites its ``VAE/vae`` snapshot and stage 2 writes the
model as it stands into ``MODEL/snapshot`` (a whole model folder, ``finished: false`` in its ``training.json``,
removed when the run finishes), so either can be gated while it trains. ``--resume OUT/checkpoint.pt`` (same
command otherwise) continues it: the same seed and thread count give bit-identical weights to an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file
from transformers import UMT5EncoderModel
from transformers.utils import logging as transformers_logging

from drift_lab.latents import video_frame_count
from drift_lab.model import (
    FRAMES_PER_BLOCK,
    PRESETS,
    TRAINING_FILE,
    LabPreset,
    TrainingConfig,
    build_lab_components,
    get_preset,
    lab_pipeline_options,
    save_lab_model,
)
from drift_lab.training_data import build_pool, scene_seeds
from drift_lab.training_decoder import (
    continued_decoder,
    differing_encoder_tensors,
    train_decoder,
    with_decoder_stage,
)
from drift_lab.training_loop import Checkpointing, Progress, Streams, load_checkpoint, resolve_dtype
from drift_lab.training_transformer import train_transformer
from drift_lab.training_vae import train_vae
from drift_lab.world import DATA_VERSION
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.models.tiny import TinyComponents

STAGES = ("all", "vae", "decoder", "transformer")
CHECKPOINT_FILE = "checkpoint.pt"
# Stage 2's model as of its last checkpoint, a model folder inside the run's own (not committed).
SNAPSHOT_FOLDER = "snapshot"
VAE_FOLDER = "vae"
VAE_WEIGHTS = f"{VAE_FOLDER}/diffusion_pytorch_model.safetensors"
TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class RunOptions:
    """How one training run is carried out (the preset says what is trained)."""

    seed: int = 0
    vae_steps: int | None = None  # None: the preset's
    steps: int | None = None
    context_noise_aug: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int = 50
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    command: str = ""
    stage: str = "all"
    vae_from: Path | None = None  # stage-1 folder the decoder and transformer stages start from
    resume: Path | None = None  # checkpoint a staged run continues
    checkpoint_minutes: float = 5.0
    stop_after: int | None = None  # steps of this invocation before a staged run checkpoints and stops
    # Stage transformer: accept an autoencoder whose stage 1 has not finished (its snapshot at its last
    # checkpoint, e.g. one that passes its gate already); the model's record says how far it had got.
    unfinished_vae: bool = False
    # Stage transformer: a fine-tune, starting from this finished model's transformer and text encoder instead
    # of fresh weights (same architecture, world and encoder); the preset's training section sets the new run.
    init_from: Path | None = None
    pool_cache: Path | None = None  # folder keeping encoded transformer pools across runs (None: encode each time)

    def validate(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        for name in ("vae_steps", "steps", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1; got {self.log_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads}")
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0; got {self.checkpoint_minutes}")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        builds_on_vae = self.stage in ("decoder", "transformer")
        if (self.vae_from is not None) != builds_on_vae:
            raise ValueError(
                "vae_from (the trained autoencoder's folder) goes with, and only with, stage decoder or transformer"
            )
        if self.unfinished_vae and not builds_on_vae:
            raise ValueError("unfinished_vae goes with stage decoder or transformer only")
        if self.pool_cache is not None and self.stage not in ("all", "transformer"):
            raise ValueError("pool_cache keeps the transformer's pool: it goes with stage all or transformer only")
        if self.init_from is not None and self.stage != "transformer":
            raise ValueError("init_from (a model folder to fine-tune) goes with stage transformer only")
        if builds_on_vae and self.vae_steps is not None:
            raise ValueError(f"vae_steps is the trained autoencoder's: it cannot be set for stage {self.stage}")
        # A one-shot run takes minutes (smoke, micro); only the stages of a long run checkpoint.
        if self.stage == "all" and (self.resume is not None or self.stop_after is not None):
            raise ValueError("resume and stop_after need a staged run: stage vae, decoder or transformer")
        resolve_dtype(self.dtype)


def effective_preset(preset: LabPreset, options: RunOptions) -> LabPreset:
    """The preset with the run's overrides applied (what ``training.json`` records)."""
    overrides: dict[str, Any] = {}
    if options.vae_steps is not None:
        overrides["vae_steps"] = options.vae_steps
    if options.steps is not None:
        overrides["steps"] = options.steps
    if options.context_noise_aug is not None:
        overrides["context_noise_aug"] = options.context_noise_aug
    return preset.with_training(**overrides)


def train_lab_model(preset: LabPreset, out: str | Path, options: RunOptions) -> dict[str, Any]:
    """Run ``options.stage`` into ``out``; returns what it wrote as ``training.json`` (``finished`` False and
    nothing but the checkpoint written when a staged run stopped early)."""
    options.validate()
    preset = effective_preset(preset, options)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    out = Path(out)
    if options.stage == "vae":
        return _vae_stage(preset, out, options)
    if options.stage == "decoder":
        return _decoder_stage(preset, out, options)
    if options.stage == "transformer":
        return _transformer_stage(preset, out, options)
    started = time.perf_counter()
    streams = Streams.seeded(options.seed)
    components = build_lab_components(preset, options.seed)
    components.vae = components.vae.to(options.device)
    vae_progress = train_vae(
        components.vae, preset.vae_world, preset.training, streams.rng, resolve_dtype(options.dtype), options.log_every
    )
    vae_record = _vae_record(preset, options, components.vae, vae_progress)
    metadata = _train_transformer(preset, options, components, streams, vae_record, None)
    metadata["wall_seconds"] = round(time.perf_counter() - started, 1)
    save_lab_model(components, out, default_size=preset.frame_size, metadata=metadata)
    return metadata


def _checkpointing(out: Path, options: RunOptions, identity: dict[str, Any]) -> Checkpointing:
    resume = None if options.resume is None else _with_later_defaults(load_checkpoint(options.resume))
    return Checkpointing(out / CHECKPOINT_FILE, 60.0 * options.checkpoint_minutes, identity, resume, options.stop_after)


def _with_later_defaults(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with the training options added to the lab after it was written set to their defaults in
    its recorded preset: the run that wrote it trained at those defaults (each new option's default keeps the
    old behaviour), so adding an option does not orphan the checkpoints of runs in progress."""
    recorded = checkpoint["identity"].get("preset")
    if recorded is None:  # stages keyed by a part of the preset record only that part
        return checkpoint
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainingConfig())))
    training = {**defaults, **recorded["training"]}
    identity = {**checkpoint["identity"], "preset": {**recorded, "training": training}}
    return {**checkpoint, "identity": identity}


def _autoencoder_part(preset: LabPreset) -> dict[str, Any]:
    """What of a preset the autoencoder depends on: its world, architecture and training hyper-parameters.

    Stage 1 checkpoints are keyed by this alone, so that changing a preset's transformer part while its
    autoencoder trains (hours) does not orphan the autoencoder's checkpoint.
    """
    values = preset.as_dict()
    shared = ("grad_clip", "min_lr_ratio")
    training = {name: value for name, value in values["training"].items() if name.startswith("vae_") or name in shared}
    return {"world": preset.vae_world.as_dict(), "vae": values["vae"], "training": training}


def _identity(stage: str, options: RunOptions, **parts: Any) -> dict[str, Any]:
    """What a checkpoint of this stage must agree on with the run resuming it."""
    return {"stage": stage, "seed": options.seed, "data_version": DATA_VERSION, **parts}


def _vae_stage(preset: LabPreset, out: Path, options: RunOptions) -> dict[str, Any]:
    """Stage 1: train the autoencoder; ``out/vae`` and ``out/training.json`` follow every checkpoint."""
    streams = Streams.seeded(options.seed)
    vae = build_lab_components(preset, options.seed).vae.to(options.device)
    checkpointing = _checkpointing(out, options, _identity("vae", options, autoencoder=_autoencoder_part(preset)))
    records: list[dict[str, Any]] = []

    def snapshot(progress: Progress) -> None:
        records.append(_vae_record(preset, options, vae, progress))
        vae.save_pretrained(out / VAE_FOLDER)
        (out / TRAINING_FILE).write_text(json.dumps(records[-1], indent=2) + "\n")

    checkpointing.after_save = snapshot
    dtype = resolve_dtype(options.dtype)
    progress = train_vae(
        vae, preset.vae_world, preset.training, streams.rng, dtype, options.log_every, checkpointing
    )
    # A resumed run that had already finished writes nothing: its folder is already complete.
    return records[-1] if records else _vae_record(preset, options, vae, progress)


def _decoder_stage(preset: LabPreset, out: Path, options: RunOptions) -> dict[str, Any]:
    """Stage 1b: fine-tune the decoder of ``options.vae_from``; ``out`` is laid out as a stage-1 folder, its
    ``training.json`` the source's record plus ``decoder`` (rewritten with every checkpoint)."""
    assert options.vae_from is not None  # validated
    if preset.training.decoder_steps < 1:
        raise ValueError(f"preset {preset.name} has no decoder stage (training.decoder_steps is 0)")
    vae, source, preset = load_vae_stage(options.vae_from, preset, options.unfinished_vae)
    vae = vae.to(options.device)
    fingerprint = hashlib.sha256((options.vae_from / VAE_WEIGHTS).read_bytes()).hexdigest()
    decoder_part = {name: value for name, value in preset.as_dict()["training"].items() if name.startswith("decoder_")}
    identity = _identity(
        "decoder", options, autoencoder=_autoencoder_part(preset), decoder=decoder_part, vae_sha256=fingerprint
    )
    checkpointing = _checkpointing(out, options, identity)
    clip_frames = video_frame_count(preset.training.clip_chunks * FRAMES_PER_BLOCK)
    streams = Streams.seeded(options.seed)
    records: list[dict[str, Any]] = []

    continued = {"continues": continued_decoder(source["decoder"])} if "decoder" in source else {}

    def record(progress: Progress) -> dict[str, Any]:
        return {
            **{key: value for key, value in source.items() if key != "vae_gate"},  # the gate was the old decoder's
            "decoder": {
                "command": options.command,
                "from": str(options.vae_from),
                "finished": progress.done == progress.total,
                "steps": progress.total,
                "steps_done": progress.done,
                "clip_frames": clip_frames,
                "lr": preset.training.decoder_lr,
                "losses": {f"decoder_{name}": value for name, value in progress.final().items()},
                "history": progress.history,
                "wall_seconds": round(progress.seconds, 1),
                **continued,  # the source's own decoder stage, which this one continues
            },
        }

    def snapshot(progress: Progress) -> None:
        records.append(record(progress))
        vae.save_pretrained(out / VAE_FOLDER)
        (out / TRAINING_FILE).write_text(json.dumps(records[-1], indent=2) + "\n")

    checkpointing.after_save = snapshot
    progress = train_decoder(
        vae,
        preset.vae_world,
        preset.training,
        clip_frames,
        streams.rng,
        resolve_dtype(options.dtype),
        options.log_every,
        checkpointing,
    )
    return (records[-1] if records else record(progress))["decoder"]


def _vae_record(preset: LabPreset, options: RunOptions, vae: AutoencoderKLWan, progress: Progress) -> dict[str, Any]:
    """Stage 1's ``training.json``: enough to gate the autoencoder and to train transformers on it."""
    return {
        "stage": "vae",
        "finished": progress.done == progress.total,
        "command": options.command,
        "seed": options.seed,
        "preset": preset.as_dict(),
        "data_version": DATA_VERSION,
        "world": preset.vae_world.as_dict(),
        "clip_chunks": preset.training.clip_chunks,
        "vae_steps": preset.training.vae_steps,
        "steps_done": progress.done,
        "device": options.device,
        "dtype": options.dtype,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "parameters": {"vae": _count(vae)},
        "losses": {f"vae_{name}": value for name, value in progress.final().items()},
        "history": {"vae": progress.history},
        "wall_seconds": round(progress.seconds, 1),
    }


def load_vae_stage(
    folder: Path, preset: LabPreset, unfinished: bool = False
) -> tuple[AutoencoderKLWan, dict[str, Any], LabPreset]:
    """The finished autoencoder of a stage-1 folder (``unfinished``: or its last snapshot) and its record,
    checked to fit ``preset``, and ``preset`` with the autoencoder's training hyper-parameters as they were
    (what the model's record must show)."""
    record = json.loads((folder / TRAINING_FILE).read_text())
    if record.get("stage") != "vae":
        raise ValueError(f"{folder} is not an autoencoder written by --stage vae")
    if not record["finished"] and not unfinished:
        raise ValueError(
            f"the autoencoder in {folder} is unfinished ({record['steps_done']}/{record['vae_steps']} steps); "
            "--unfinished-vae trains on its last snapshot"
        )
    if record["data_version"] != DATA_VERSION:
        raise ValueError(f"{folder} was trained on world {record['data_version']}; this lab renders {DATA_VERSION}")
    if record["world"] != preset.vae_world.as_dict():
        raise ValueError(f"{folder} was trained on another world than preset {preset.name}'s autoencoder world")
    recorded = record["preset"]
    if recorded["vae"] != preset.as_dict()["vae"]:
        raise ValueError(f"{folder} was trained with another vae than preset {preset.name}'s")
    vae = AutoencoderKLWan.from_pretrained(folder / VAE_FOLDER).eval().requires_grad_(False)
    trained_with = {name: value for name, value in recorded["training"].items() if name.startswith("vae_")}
    return vae, record, preset.with_training(**trained_with)


def _transformer_stage(preset: LabPreset, out: Path, options: RunOptions) -> dict[str, Any]:
    """Stage 2: train a transformer on the autoencoder of ``options.vae_from``."""
    assert options.vae_from is not None  # validated
    streams = Streams.seeded(options.seed)
    components = build_lab_components(preset, options.seed)
    vae, vae_record, preset = load_vae_stage(options.vae_from, preset, options.unfinished_vae)
    components.vae = vae.to(options.device)
    fingerprint = hashlib.sha256((options.vae_from / VAE_WEIGHTS).read_bytes()).hexdigest()
    parts: dict[str, Any] = {"preset": preset.as_dict(), "vae_sha256": fingerprint}
    initial = None
    if options.init_from is not None:
        initial = _initialise_from(components, options.init_from, preset, options.vae_from)
        parts["init_sha256"] = hashlib.sha256((options.init_from / TRANSFORMER_WEIGHTS).read_bytes()).hexdigest()
    checkpointing = _checkpointing(out, options, _identity("transformer", options, **parts))

    def model_record(metadata: dict[str, Any]) -> dict[str, Any]:
        """The training run's record completed with what this stage adds (the autoencoder's folder, and the
        model a fine-tune started from with its training time)."""
        metadata = {**metadata, "vae_from": str(options.vae_from)}
        if initial is not None:
            metadata["init_from"] = initial
            metadata["stage_seconds"] = {"init": initial["wall_seconds"], **metadata["stage_seconds"]}
            metadata["wall_seconds"] = round(metadata["wall_seconds"] + initial["wall_seconds"], 1)
        return metadata

    def snapshot(metadata: dict[str, Any]) -> None:
        # Written beside the old one, then swapped in: a gate reading the snapshot sees one whole model.
        partial = out / f"{SNAPSHOT_FOLDER}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with _without_progress_bars():
            save_lab_model(components, partial, default_size=preset.frame_size, metadata=model_record(metadata))
        shutil.rmtree(out / SNAPSHOT_FOLDER, ignore_errors=True)
        partial.rename(out / SNAPSHOT_FOLDER)

    trained = _train_transformer(preset, options, components, streams, vae_record, checkpointing, snapshot)
    metadata = model_record(trained)
    if metadata["finished"]:
        save_lab_model(components, out, default_size=preset.frame_size, metadata=metadata)
        shutil.rmtree(out / SNAPSHOT_FOLDER, ignore_errors=True)
    return metadata


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """transformers draws a progress bar for every ``save_pretrained``: a line in the run's log at every snapshot."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _initialise_from(components: TinyComponents, folder: Path, preset: LabPreset, vae_from: Path) -> dict[str, Any]:
    """Replace ``components``' fresh transformer and text encoder by those of the finished model ``folder``
    (the text encoder too: the transformer was trained on its embeddings); returns what the new model's
    ``training.json`` records of the run it continues (``init_from``).

    The model must have ``preset``'s architecture and world and have been trained on the encoder of
    ``vae_from`` (its latents are the ones the fine-tune trains on)."""
    if not (folder / TRAINING_FILE).is_file():
        raise ValueError(f"{folder} is not a model folder written by drift_lab.train (no {TRAINING_FILE})")
    record = json.loads((folder / TRAINING_FILE).read_text())
    if not record.get("finished") or "preset" not in record:
        raise ValueError(f"{folder} is not a finished model written by drift_lab.train")
    for part in ("transformer", "world"):
        if record["preset"][part] != preset.as_dict()[part]:
            raise ValueError(f"{folder} has another {part} than preset {preset.name}'s: it cannot be fine-tuned by it")
    differing = differing_encoder_tensors(
        load_file(folder / VAE_WEIGHTS), load_file(vae_from / VAE_WEIGHTS), f"{folder} and {vae_from}"
    )
    if differing:
        raise ValueError(f"{folder} was trained on another encoder than {vae_from}'s ({len(differing)} tensors differ)")
    stages = record.get("stage_seconds", {})
    components.transformer = WanTransformer3DModel.from_pretrained(folder / "transformer").eval()
    components.text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").eval().requires_grad_(False)
    return {
        "folder": str(folder),
        "command": record.get("command", ""),
        "steps_done": record["steps_done"],
        "losses": {name: value for name, value in record["losses"].items() if name.startswith("transformer_")},
        # A fine-tune of a fine-tune: the time of every transformer run before this one.
        "wall_seconds": round(stages.get("init", 0.0) + stages.get("transformer", 0.0), 1),
    }


def _train_transformer(
    preset: LabPreset,
    options: RunOptions,
    components: TinyComponents,
    streams: Streams,
    vae_record: dict[str, Any],
    checkpointing: Checkpointing | None,
    snapshot: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Encode the pool with ``components.vae`` and train the transformer (the one-shot run's second half and
    stage 2); moves the components back to the CPU and returns the model's ``training.json``.

    ``snapshot`` is called after every checkpoint with the record as of that step, ``components`` then holding
    the transformer being trained (on the training device, in training mode)."""
    config = preset.training
    device = torch.device(options.device)
    assert streams.generator is not None  # seeded streams carry the noise generator
    encoder = components.prompt_encoder()
    encoder.text_encoder.to(device)
    clip_frames = video_frame_count(config.clip_chunks * FRAMES_PER_BLOCK)
    vae = components.vae
    seeds = scene_seeds(streams.rng, config.pool_clips)
    pool = build_pool(vae, encoder, preset.world, seeds, clip_frames, device, True, options.pool_cache)
    if config.switch_clips:
        # Drawn after the pool's seeds, so a preset without switch clips draws exactly what it drew before.
        switch_seeds = scene_seeds(streams.rng, config.switch_clips)
        switches = build_pool(vae, encoder, preset.world, switch_seeds, clip_frames, device, True,
                              options.pool_cache, switches=True)  # fmt: skip
        pool = pool.joined(switches)
    model = CausalWanTransformer(components.transformer.to(device), preset.text_len, "sdpa")
    components.transformer = model.base

    def record(progress: Progress) -> dict[str, Any]:
        return _transformer_record(preset, options, components, len(pool), vae_record, progress)

    if checkpointing is not None and snapshot is not None:
        checkpointing.after_save = lambda progress: snapshot(record(progress))
    progress = train_transformer(
        model,
        pool,
        config,
        streams.rng,
        streams.generator,
        resolve_dtype(options.dtype),
        options.log_every,
        checkpointing,
    )
    components.vae, components.transformer = vae.cpu(), model.base.cpu()
    components.text_encoder = components.text_encoder.cpu()
    return record(progress)


def _transformer_record(
    preset: LabPreset,
    options: RunOptions,
    components: TinyComponents,
    pool_clips: int,
    vae_record: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """The ``training.json`` of a model whose transformer has trained ``progress`` (without what stage 2 adds)."""
    config = preset.training
    metadata = {
        "command": options.command,
        "finished": progress.done == progress.total,
        "seed": options.seed,
        "preset": preset.as_dict(),
        "data_version": DATA_VERSION,
        "world": preset.as_dict()["world"],
        "clip_chunks": config.clip_chunks,
        "frames_per_block": FRAMES_PER_BLOCK,
        "default_size": list(preset.frame_size),
        "vae_steps": config.vae_steps,
        "steps": config.steps,
        "steps_done": progress.done,
        "context_noise_aug": config.context_noise_aug,
        "pipeline_options": lab_pipeline_options(config),
        "pool_clips": pool_clips,
        "device": options.device,
        "dtype": options.dtype,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "parameters": {
            "transformer": _count(components.transformer),
            "vae": _count(components.vae),
            "text_encoder": _count(components.text_encoder),
        },
        "latents_mean": list(components.vae.config.latents_mean),
        "latents_std": list(components.vae.config.latents_std),
        "losses": {
            **vae_record["losses"],
            **{f"transformer_{name}": value for name, value in progress.final().items()},
        },
        "history": {"vae": vae_record["history"]["vae"], "transformer": progress.history},
        "vae_steps_done": vae_record.get("steps_done", config.vae_steps),
        "stage_seconds": {"vae": vae_record["wall_seconds"], "transformer": round(progress.seconds, 1)},
        "wall_seconds": round(vae_record["wall_seconds"] + progress.seconds, 1),
    }
    if "decoder" in vae_record:  # trained on a --stage decoder autoencoder: its stage is part of this model's
        with_decoder_stage(metadata, vae_record["decoder"])
    return metadata


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS), help="model and training preset")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, training scenes and noise")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument(
        "--stage",
        default="all",
        choices=STAGES,
        help="all: both stages in one run (default); vae: the autoencoder alone; decoder: the --vae-from "
        "autoencoder's decoder fine-tuned on whole training clips, encoder frozen; transformer: a transformer on "
        "the autoencoder of --vae-from",
    )
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="folder written by --stage vae or decoder (stages decoder, transformer)",
    )
    parser.add_argument(
        "--unfinished-vae",
        action="store_true",
        help="stages decoder and transformer: start from the --vae-from autoencoder's last snapshot although stage "
        "1 has not finished (gate it first); the model's record keeps how many of its steps were done",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="stage transformer: fine-tune this finished model folder's transformer (same architecture, world and "
        "encoder) with the preset's training settings, instead of training fresh weights",
    )
    parser.add_argument(
        "--pool-cache",
        type=Path,
        default=None,
        help="keep the transformer's encoded training pool in this folder (~230 MB for the cpu presets) and reuse "
        "it when a run needs the same clips again (a resume, a fine-tune of the same seed) instead of encoding "
        "them anew (~10-15 minutes on one thread)",
    )
    parser.add_argument("--resume", type=Path, default=None, help="continue a staged run from this checkpoint")
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        help="a staged run writes OUT/checkpoint.pt this often, and at the end (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="staged runs: checkpoint and stop after this many steps of this run",
    )
    parser.add_argument("--steps-vae", type=int, default=None, help="autoencoder steps (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="transformer steps (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(("float32", "bfloat16")), help="autocast compute dtype"
    )
    parser.add_argument(
        "--context-noise-aug",
        type=float,
        default=None,
        help="noise the clean context to a random timestep in [0, T] while training (default: the preset's)",
    )
    parser.add_argument("--log-every", type=int, default=50, help="print a progress line every N steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). 1 is much faster on a CPU shared with other work: these "
        "small kernels spend their time in thread synchronisation when the cores are oversubscribed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = RunOptions(
        seed=args.seed,
        vae_steps=args.steps_vae,
        steps=args.steps,
        context_noise_aug=args.context_noise_aug,
        device=args.device,
        dtype=args.dtype,
        log_every=args.log_every,
        threads=args.threads,
        command=shlex.join(["python", "-m", "drift_lab.train", *arguments]),
        stage=args.stage,
        vae_from=args.vae_from,
        resume=args.resume,
        checkpoint_minutes=args.checkpoint_minutes,
        stop_after=args.stop_after,
        unfinished_vae=args.unfinished_vae,
        init_from=args.init_from,
        pool_cache=args.pool_cache,
    )
    try:
        metadata = train_lab_model(get_preset(args.preset), args.out, options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not metadata["finished"]:
        checkpoint = args.out / CHECKPOINT_FILE
        print(f"stopped after step {metadata['steps_done']}; continue with --resume {checkpoint}", file=sys.stderr)
        return 0
    losses = ", ".join(f"{name} {value:.5f}" for name, value in metadata["losses"].items())
    print(f"wrote {args.out} in {metadata['wall_seconds']} s ({losses})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
