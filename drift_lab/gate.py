"""The quality gate: is a lab model good enough, inside its training horizon, for its drift to mean anything?

A drift evaluation of a model that cannot even reproduce the world inside the clips it was trained on
measures nothing but the model's failure. Inside the training horizon (``clip_chunks`` chunks, from
``training.json``; 3 when absent), with the plain pipeline (arm ``none``, Self Forcing) on held-out scenes:

* free rollout: prefill the true first chunk, generate the rest of the clip; over the generated frames the
  object-count error must be < 0.1, the colour error < 0.1 and the mean object survival > 0.99 (objects
  surviving in more than 99% of (object, frame) pairs);
* teacher forcing: for every chunk ``k >= 1`` of the clip, prefill the true chunks before it and generate
  chunk ``k`` alone; its PSNR against the truth must be > 25 dB.

Beside the checks it reports why the free rollouts lost the objects they lost (``lost_objects``: each lost
(object, frame) pair attributed to contact with another object, a bounce off the border, a small object or
none of these; ``drift_lab.measure.lost_object_causes``), and a reference that knows no motion
(``no_motion``): the last true frame before the free rollout, repeated over its frames and measured like it.
A model whose survival is not well above this reference has not learnt how the world moves, whatever its
loss says.

The autoencoder is gated on its own first (``--vae-only``; issue #15): a transformer trained on latents
that already lose the objects cannot pass. On held-out scenes, the true clip (the training horizon) is
encoded and decoded chunk by chunk through the server's streaming decoder, as rollouts decode, and its
reconstruction must pass the free-rollout object checks above (count, colour, survival) over every frame.
It reads ``FOLDER/vae`` and ``FOLDER/training.json``: a folder of ``drift_lab.train --stage vae`` (also while
it trains: each checkpoint rewrites them) or a whole model folder.

``python -m drift_lab.gate FOLDER [--vae-only] [--seeds N] [--json] [--record]`` prints each metric with its
threshold and verdict and exits 0 when every check passes, 1 otherwise. ``--record`` also writes the result
into ``FOLDER/training.json`` (``gate``, or ``vae_gate`` with ``--vae-only``) and, in a model folder, rewrites
its ``MODEL_CARD.md`` so the card carries the values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from drift_lab.arms import CONTROL, get_arm
from drift_lab.latents import encode_frames
from drift_lab.measure import LOSS_CAUSES, FrameMetrics, describe_lost, lost_object_causes, measure
from drift_lab.model import TRAINING_FILE, model_card
from drift_lab.rollout import (
    EVALUATION_SEED_OFFSET,
    LabModel,
    chunk_first_frame,
    decode_chunks,
    load_lab_model,
    make_truth,
    recorded_clip_chunks,
    recorded_world,
    run_rollout,
)
from drift_lab.world import Scene, WorldSpec, render, sample_scene
from tokentrim_server.models.vae import StreamingVaeDecoder

PIPELINE = "self_forcing"


@dataclass(frozen=True)
class Check:
    """One gate criterion: ``value`` must be ``below`` (or above) ``threshold``."""

    metric: str
    threshold: float
    below: bool
    description: str

    def passes(self, value: float) -> bool:
        if math.isnan(value):  # e.g. no object ever found: nothing was shown to be right
            return False
        return value < self.threshold if self.below else value > self.threshold


CHECKS: tuple[Check, ...] = (
    Check("count_error", 0.1, True, "mean |detected - true object count| per frame, free rollout"),
    Check("colour_error", 0.1, True, "mean colour error of found objects, [0, 1], free rollout"),
    Check("survival", 0.99, False, "fraction of true objects found, over (object, frame), free rollout"),
    Check("teacher_forced_psnr", 25.0, False, "dB of one chunk generated after the true chunks before it"),
)
# The autoencoder's gate: the object checks, on its reconstruction of the truth instead of a free rollout.
OBJECT_CHECKS: tuple[Check, ...] = tuple(check for check in CHECKS if check.metric != "teacher_forced_psnr")


def free_rollout_values(metrics: Sequence[FrameMetrics]) -> dict[str, float]:
    """Gate values of free rollouts: frame means pooled over every rollout (NaN frames ignored)."""

    def pooled(name: str) -> float:
        values = np.concatenate([np.asarray(getattr(item, name), dtype=np.float64) for item in metrics])
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    return {name: pooled(name) for name in ("count_error", "colour_error", "survival")}


def verdict(values: dict[str, float], checks: Sequence[Check] = CHECKS) -> dict[str, Any]:
    """Every check with its value, threshold and pass/fail, and the overall ``pass``."""
    missing = [check.metric for check in checks if check.metric not in values]
    if missing:
        raise ValueError(f"values lack gate metric(s) {', '.join(missing)}")
    entries = {
        check.metric: {
            "value": values[check.metric],
            "threshold": check.threshold,
            "rule": "<" if check.below else ">",
            "pass": check.passes(values[check.metric]),
            "description": check.description,
        }
        for check in checks
    }
    return {"checks": entries, "pass": all(entry["pass"] for entry in entries.values())}


def evaluate_gate(model: LabModel, seeds: int, *, progress: bool = False) -> dict[str, Any]:
    """Run the gate's rollouts on ``seeds`` held-out scenes; returns :func:`verdict` plus what was run."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    arm = get_arm(PIPELINE, CONTROL)
    clip = model.clip_chunks
    free: list[FrameMetrics] = []
    still: list[FrameMetrics] = []
    lost = {cause: {"pairs": 0, "lost": 0} for cause in LOSS_CAUSES}
    psnr: list[np.ndarray] = []
    started = time.perf_counter()
    for number in range(seeds):
        truth = make_truth(model, EVALUATION_SEED_OFFSET + number, clip - 1)  # the last chunk is never prefilled
        rollout = run_rollout(model, arm, truth, 1, clip - 1)
        free.append(rollout.metrics)
        for cause, counts in lost_object_causes(rollout.frames, truth.scene, rollout.start_frame).items():
            lost[cause] = {name: lost[cause][name] + count for name, count in counts.items()}
        still.append(no_motion_metrics(truth.scene, chunk_first_frame(1), chunk_first_frame(clip)))
        for chunk in range(1, clip):
            psnr.append(run_rollout(model, arm, truth, chunk, 1).metrics.psnr)
        if progress:
            elapsed = time.perf_counter() - started
            print(f"gate: seed {number + 1}/{seeds}, {elapsed:.1f} s", file=sys.stderr, flush=True)
    values = {**free_rollout_values(free), "teacher_forced_psnr": float(np.concatenate(psnr).mean())}
    return {
        "gate": "quality",
        "model": model.name,
        **training_state(model.metadata),
        "pipeline": PIPELINE,
        "clip_chunks": clip,
        "seeds": seeds,
        "first_seed": EVALUATION_SEED_OFFSET,
        **verdict(values),
        "no_motion": free_rollout_values(still),
        "lost_objects": lost,
    }


def training_state(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the gated model finished training, and its steps (a snapshot of a run still training, e.g.
    ``MODEL/snapshot``, is gated like any model but must not be mistaken for the finished one)."""
    if "finished" not in metadata:  # a model folder without a training record
        return {}
    steps = {name: metadata.get(name) for name in ("steps_done", "steps")}
    return {"finished": bool(metadata["finished"]), **steps}


def no_motion_metrics(scene: Scene, start: int, end: int) -> FrameMetrics:
    """Frames ``start .. end - 1`` of ``scene`` replaced by its frame ``start - 1`` (nothing moves any more),
    measured against the truth: the reference a free rollout from ``start`` must beat."""
    last = render(scene, start - 1, 1)
    return measure(np.repeat(last, end - start, axis=0), scene, start)


def reconstruct(vae: AutoencoderKLWan, frames: np.ndarray) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` frames encoded (as rollouts encode the truth) and decoded chunk by chunk through
    the server's streaming decoder (as rollouts decode)."""
    return decode_chunks(StreamingVaeDecoder(vae), encode_frames(vae, frames))[0]


def evaluate_vae_gate(
    name: str, vae: AutoencoderKLWan, world: WorldSpec, clip_chunks: int, seeds: int, *, progress: bool = False
) -> dict[str, Any]:
    """The autoencoder's gate: :data:`OBJECT_CHECKS` on its reconstructions of ``seeds`` held-out true clips of
    ``clip_chunks`` chunks, every frame measured."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    metrics = []
    started = time.perf_counter()
    for number in range(seeds):
        scene = sample_scene(EVALUATION_SEED_OFFSET + number, world)
        metrics.append(measure(reconstruct(vae, render(scene, 0, chunk_first_frame(clip_chunks))), scene, 0))
        if progress:
            elapsed = time.perf_counter() - started
            print(f"autoencoder gate: seed {number + 1}/{seeds}, {elapsed:.1f} s", file=sys.stderr, flush=True)
    return {
        "gate": "autoencoder",
        "model": name,
        "clip_chunks": clip_chunks,
        "seeds": seeds,
        "first_seed": EVALUATION_SEED_OFFSET,
        **verdict(free_rollout_values(metrics), OBJECT_CHECKS),
    }


def load_vae_gate_inputs(folder: Path, device: str, dtype: str) -> tuple[AutoencoderKLWan, WorldSpec, int]:
    """The autoencoder of ``folder`` (``vae/``) with the world and clip length its ``training.json`` records."""
    path = folder / TRAINING_FILE
    metadata: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=getattr(torch, dtype)).to(device).eval()
    return vae, recorded_world(folder.name, metadata), recorded_clip_chunks(metadata)


def format_table(result: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`evaluate_gate`'s or :func:`evaluate_vae_gate`'s result."""
    lines = [
        f"{result['gate']} gate of {result['model']} ({result['seeds']} seeds, clip of {result['clip_chunks']} chunks)"
    ]
    if result.get("finished") is False:
        lines.append(f"  unfinished model: step {result['steps_done']} of {result['steps']}")
    for metric, entry in result["checks"].items():
        mark = "pass" if entry["pass"] else "FAIL"
        lines.append(f"  {metric:<20} {entry['value']:9.4f} {entry['rule']} {entry['threshold']:<6g} {mark}")
    if "lost_objects" in result:
        lines.append(f"  (lost (object, frame) pairs of the free rollouts: {describe_lost(result['lost_objects'])})")
    if "no_motion" in result:
        reference = result["no_motion"]
        lines.append(
            f"  (no-motion reference, the last true frame repeated: survival {reference['survival']:.4f}, "
            f"count error {reference['count_error']:.4f})"
        )
    lines.append("PASS" if result["pass"] else "FAIL")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="lab model folder (as written by python -m drift_lab.train)")
    parser.add_argument("--seeds", type=int, default=8, help="held-out scenes to evaluate (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument(
        "--vae-only", action="store_true", help="gate the autoencoder alone on its reconstruction of the truth"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="model dtype (default: %(default)s)")
    parser.add_argument("--record", action="store_true",
                        help="write the result into FOLDER/training.json and the model card")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.vae_only:
        folder = Path(args.folder)
        vae, world, clip_chunks = load_vae_gate_inputs(folder, args.device, args.dtype)
        result = evaluate_vae_gate(folder.name, vae, world, clip_chunks, args.seeds, progress=True)
    else:
        model = load_lab_model(args.folder, device=args.device, dtype=args.dtype)
        result = evaluate_gate(model, args.seeds, progress=True)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    if args.record:
        record_gate(Path(args.folder), result)
    return 0 if result["pass"] else 1


def record_gate(folder: Path, result: dict[str, Any]) -> None:
    """Store a gate result in ``folder``'s ``training.json`` (``vae_gate`` for the autoencoder's) and, for a
    model folder, rewrite its model card from it."""
    path = folder / TRAINING_FILE
    metadata = json.loads(path.read_text())
    metadata["vae_gate" if result["gate"] == "autoencoder" else "gate"] = result
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    if (folder / "MODEL_CARD.md").is_file():
        (folder / "MODEL_CARD.md").write_text(model_card(metadata))


if __name__ == "__main__":
    sys.exit(main())
