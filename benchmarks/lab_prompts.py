"""Does a served lab model show what its prompt names, from the first frame (the ``lab_scene`` hook) and after a
prompt switch?

    python -m benchmarks.lab_prompts                                  # from the repository root: the demo's model
    python -m benchmarks.lab_prompts drift_lab/weights/cpu-wide-lanes-seed1 --levels 1 0.5 --seeds 24
    python -m benchmarks.lab_prompts --levels 0.5 --chunks 8 \\
        --switch "3:a yellow circle and a green square bouncing on a plain gray background"

A served lab video starts from its prompt alone (nothing prefilled). Per model, ``noise_level`` and session
seed this runs a session as the server does (``GenerationSession``: Self Forcing with the model's trained
options from ``training.json``, the ``none`` policy, the ``lab_scene`` hook at that level; 1: the hook changes
nothing, bit for bit: the plain session), with the prompt switch if one is given, decodes every chunk and looks
for the named objects with the lab's own detector (``drift_lab.measure.detect``: a component of the object's
palette colour of at least the lab's minimum area) in a few frames: 0, 8, the middle and the last; with a
switch, 0, 8 and the last frame before it, then the first frame a chunk after it, the middle of the rest and
the last, each against the caption in force there. A seed *keeps* the scene when every named object is found
in every checked frame. Its *count error* in a frame is |objects of the caption's colours detected - objects
named|: a named object drawn twice, or an object added, shows there and not in the fraction found. After a
switch it also counts the *stale* objects: colours of the first caption that the second does not name, still
found in the checked frames after it.

Prints a line per model and level (seeds that keep the scene, mean fraction of named objects found and mean
count error per checked frame, mean stale fraction after a switch, mean seconds of the first chunk and of the
session), then one JSON object per line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tokentrim_client.cli import flags

from benchmarks.rows import figures, print_rows
from drift_lab.measure import detect
from drift_lab.rollout import LabModel, chunk_first_frame, load_lab_model
from drift_lab.world import Scene, scene_from_caption
from tokentrim_server.cli.demo import DEFAULT_MODEL, LAB_PROMPT
from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.hooks import create_hook
from tokentrim_server.pipelines.registry import pipeline_options
from tokentrim_server.policies import create_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="*", default=[DEFAULT_MODEL],
                        help=f"drift-lab model folders (default: the demo's, {DEFAULT_MODEL.name})")  # fmt: skip
    parser.add_argument("--caption", default=LAB_PROMPT, help="the prompt, in the lab world's caption grammar")
    parser.add_argument("--switch", type=flags.switch, default=None, metavar="CHUNK:CAPTION",
                        help="switch the prompt to CAPTION before chunk CHUNK (1 <= CHUNK < --chunks)")  # fmt: skip
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.875, 0.625, 0.5, 0.375],
                        help="lab_scene noise levels in (0, 1]; 1 is the plain session")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=12, help="session seeds 0..N-1 per model and level")
    parser.add_argument("--chunks", type=int, default=6, help="chunks per session")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def checked_frames(count: int, switch_frame: int | None, chunk_frames: int) -> list[int]:
    """The frames looked at in a ``count``-frame video (see the module docstring), in order."""
    if switch_frame is None:
        return sorted({0, min(8, count - 1), count // 2, count - 1})
    after = min(switch_frame + chunk_frames, count - 1)
    return sorted({0, min(8, switch_frame - 1), switch_frame - 1, after, (after + count - 1) // 2, count - 1})


def run_session(model: LabModel, caption: str, seed: int, level: float, chunks: int,
                switch: tuple[int, str] | None) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """One session as the server runs it: its frames ``[T, H, W, 3]``, first-chunk and session seconds."""
    bundle = model.bundle
    height, width = bundle.default_size
    options = pipeline_options("self_forcing", model.options("self_forcing"))
    hooks = [create_hook("lab_scene", {"noise_level": level})]
    plan = SessionPlan(caption, seed, "self_forcing", options, chunks, height, width, create_policy("none"), hooks)
    started = time.perf_counter()
    session = GenerationSession(bundle, plan)
    frames, first_chunk_seconds = [], 0.0
    try:
        for index in range(chunks):
            if switch is not None and index == switch[0]:
                session.request_prompt_change(switch[1])
            step = session.step()
            first_chunk_seconds = first_chunk_seconds or step.denoise_seconds
            frames.append(session.decode(step))
    finally:
        session.close()
    return np.concatenate(frames), first_chunk_seconds, time.perf_counter() - started


def found_and_count_error(frame: np.ndarray, scene: Scene) -> tuple[float, int]:
    """Fraction of ``scene``'s objects (by colour) the detector finds in ``frame``, and |objects of the scene's
    colours detected - objects named| (an object drawn twice, or one too many of a colour, counts here)."""
    named = Counter(shape.colour for shape in scene.shapes)
    detected = Counter(detection.colour for detection in detect(frame, scene))
    found = sum(min(detected[colour], count) for colour, count in named.items()) / sum(named.values())
    return found, abs(sum(detected.values()) - len(scene.shapes))


def measure(model: LabModel, args: argparse.Namespace, seed: int, level: float) -> dict:
    switch = args.switch
    video, first_chunk_seconds, seconds = run_session(model, args.caption, seed, level, args.chunks, switch)
    first = scene_from_caption(args.caption, seed, model.world)
    switch_frame = None if switch is None else chunk_first_frame(switch[0])
    frames = checked_frames(video.shape[0], switch_frame, chunk_first_frame(2) - chunk_first_frame(1))
    second = None if switch is None else scene_from_caption(switch[1], seed, model.world)
    found, count_errors, stale = [], [], []
    for index in frames:
        in_force = first if second is None or index < switch_frame else second
        fraction, count_error = found_and_count_error(video[index], in_force)
        found.append(fraction)
        count_errors.append(count_error)
        if in_force is first:
            continue
        # Colours of the first caption that the second does not name: each one still found is stale.
        dropped = {shape.colour for shape in first.shapes} - {shape.colour for shape in second.shapes}
        if dropped:
            seen = {detection.colour for detection in detect(video[index], first)}
            stale.append(len(dropped & seen) / len(dropped))
    return {"frames": frames, "found": found, "count_errors": count_errors, "stale": stale,
            "first_chunk_seconds": first_chunk_seconds, "seconds": seconds}  # fmt: skip


def summarise(folder: Path, args: argparse.Namespace, level: float, runs: list[dict]) -> dict:
    stale = [value for run in runs for value in run["stale"]]
    return {
        "model": folder.name, "noise_level": level, "seeds": args.seeds, "chunks": args.chunks,
        "caption": args.caption, "switch": None if args.switch is None else "{}:{}".format(*args.switch),
        "checked_frames": runs[0]["frames"],
        "seeds_keeping_scene": sum(all(fraction == 1.0 for fraction in run["found"]) for run in runs),
        "found_per_checked_frame": [statistics.fmean(run["found"][i] for run in runs)
                                    for i in range(len(runs[0]["found"]))],
        "count_error_per_checked_frame": [statistics.fmean(run["count_errors"][i] for run in runs)
                                          for i in range(len(runs[0]["count_errors"]))],
        "stale_after_switch": statistics.fmean(stale) if stale else None,
        "first_chunk_seconds": statistics.fmean(run["first_chunk_seconds"] for run in runs),
        "session_seconds": statistics.fmean(run["seconds"] for run in runs),
    }  # fmt: skip


def describe(row: dict) -> str:
    stale = "" if row["stale_after_switch"] is None else f"; stale after the switch {row['stale_after_switch']:.2f}"
    return (
        f"{row['model']:<24} noise_level {row['noise_level']:<6g} keeps the scene in "
        f"{row['seeds_keeping_scene']:>2}/{row['seeds']} seeds; objects found at frames {row['checked_frames']}: "
        f"{figures(row['found_per_checked_frame'])}; count error {figures(row['count_error_per_checked_frame'])}"
        f"{stale}; "
        f"first chunk {row['first_chunk_seconds']:.2f} s, session {row['session_seconds']:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1 or args.chunks < 1:
        raise SystemExit(f"--seeds and --chunks must be >= 1; got --seeds {args.seeds}, --chunks {args.chunks}")
    if not all(0.0 < level <= 1.0 for level in args.levels):
        raise SystemExit(f"--levels: every level must be in (0, 1], got {args.levels}")
    if args.switch is not None and args.switch[0] >= args.chunks:
        raise SystemExit(f"--switch: CHUNK must be < --chunks ({args.chunks}); got {args.switch[0]}")
    print_rows(measure_models(args), describe)
    return 0


def measure_models(args: argparse.Namespace) -> Iterator[dict]:
    """One summary row per model and level, as each is measured."""
    for folder in args.models:
        model = load_lab_model(folder)
        for level in args.levels:
            yield summarise(folder, args, level, [measure(model, args, seed, level) for seed in range(args.seeds)])


if __name__ == "__main__":
    sys.exit(main())
