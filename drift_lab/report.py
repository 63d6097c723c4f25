"""``python -m drift_lab.report``: run the drift evaluation and write ``docs/drift-lab.md`` with its figures.

The markdown, the PNGs (in a folder named after the report, e.g. ``docs/drift-lab/``) and the raw per-seed
results (``docs/drift-lab.json``) are all generated; the "What the result is" section is computed from the
intervals and rates (``drift_lab.analysis``), never written by hand. The one hand-written section, how the
models are trained on a CPU, is kept in ``drift_lab/training-on-cpu.md`` and copied in verbatim, so that
regenerating the report keeps it.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from drift_lab.analysis import LABELS, ORIENTATION, ArmRow, arm_rows, conclusions
from drift_lab.arms import CONTROL
from drift_lab.experiment import (
    LATE_FRACTION,
    METRICS,
    ONSET_SURVIVAL,
    ExperimentConfig,
    ExperimentResult,
    apply_threads,
    run_experiment,
    write_json,
)
from drift_lab.figures import plot_flickering, plot_over_time, plot_strip
from drift_lab.gate import CHECKS, evaluate_gate
from drift_lab.rollout import EVALUATION_SEED_OFFSET, chunk_first_frame, load_lab_model
from drift_lab.statistics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Interval
from drift_lab.world import DATA_VERSION

TRAINING_GUIDE = Path(__file__).with_name("training-on-cpu.md")

# Defaults of the flags left out: the full evaluation, and --smoke (a quick end-to-end run, not evidence).
FULL: dict[str, Any] = {
    "seeds": 32,
    "horizon_multiple": 8,
    "pipelines": ["self_forcing", "rolling_forcing"],
    "arms": None,
    "gate_seeds": 4,
}
SMOKE: dict[str, Any] = {
    "seeds": 2,
    "horizon_multiple": 2,
    "pipelines": ["self_forcing"],
    "arms": ["tokentrim", "regenerate"],
    "gate_seeds": 0,
}


@dataclass
class ReportInputs:
    """Everything the markdown is written from."""

    result: ExperimentResult
    command: str
    date: str
    smoke: bool
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)  # name -> path relative to the report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="FOLDER", help="lab model folders")
    parser.add_argument("--seeds", type=int, help="scene seeds per model (default 32; --smoke 2)")
    parser.add_argument("--horizon-multiple", type=int, help="rollout length in training clips (default 8; smoke 2)")
    parser.add_argument("--pipelines", nargs="+", choices=("self_forcing", "rolling_forcing"),
                        help="pipelines to evaluate (default both; --smoke self_forcing)")
    parser.add_argument("--arms", nargs="+", help="arms to run besides none (default every arm; --smoke "
                        "tokentrim regenerate)")
    parser.add_argument("--prefill-chunks", type=int, default=1, help="true chunks each rollout starts from")
    parser.add_argument("--gate-seeds", type=int, help="scenes for each model's quality gate, 0 to use the gate "
                        "recorded on the model (drift_lab.gate --record), if any (default 4; --smoke 0)")
    parser.add_argument("--out", default="docs/drift-lab.md", help="markdown report path (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="model dtype (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (per job with --jobs; default: torch's "
                        "choice, 1 per job)")
    parser.add_argument("--jobs", type=int, default=1, help="processes sharing the grid, each a block of every "
                        "model's seeds (default: %(default)s; on N cores, N jobs of --threads 1)")
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end run: few seeds, short horizon")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    settings = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in defaults.items()}
    if settings["gate_seeds"] < 0:
        raise SystemExit("--gate-seeds must be >= 0")
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    apply_threads(args.threads)
    try:
        config = ExperimentConfig(
            models=tuple(args.models),
            seeds=settings["seeds"],
            horizon_multiple=settings["horizon_multiple"],
            pipelines=tuple(settings["pipelines"]),
            arms=None if settings["arms"] is None else tuple(settings["arms"]),
            prefill_chunks=args.prefill_chunks,
            device=args.device,
            dtype=args.dtype,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    out = Path(args.out)
    command = shlex.join(["python", "-m", "drift_lab.report", *argv])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    result = run_experiment(config, jobs=args.jobs, threads=args.threads)
    inputs = ReportInputs(result, command, date, args.smoke)
    for number, folder in enumerate(config.models):
        if settings["gate_seeds"]:
            print(f"quality gate {number + 1}/{len(config.models)}: {folder}", file=sys.stderr, flush=True)
            model = load_lab_model(folder, device=args.device, dtype=args.dtype)
            inputs.gates[model.name] = evaluate_gate(model, settings["gate_seeds"], progress=True)
        else:
            recorded = result.models[Path(folder).name].get("gate")
            if recorded:
                inputs.gates[Path(folder).name] = recorded
    write_report(inputs, out)
    print(f"wrote {out}, {figure_folder(out)}/ and {out.with_suffix('.json')} in {result.seconds:.1f} s")
    return 0


def figure_folder(out: Path) -> Path:
    return out.with_suffix("")


def write_report(inputs: ReportInputs, out: Path) -> None:
    """Figures, the raw JSON and the markdown for ``inputs``, at ``out`` and beside it."""
    result = inputs.result
    for pipeline in result.config.pipelines:
        for name, path in _figures(result, pipeline, figure_folder(out)).items():
            inputs.figures[name] = path.relative_to(out.parent)
    extra = {"command": inputs.command, "date": inputs.date, "smoke": inputs.smoke, "gates": inputs.gates}
    write_json(result, out.with_suffix(".json"), extra)
    out.write_text(render_markdown(inputs))


def _figures(result: ExperimentResult, pipeline: str, folder: Path) -> dict[str, Path]:
    """``pipeline``'s figures: metrics over time, flickering, and the example strip when frames were kept."""
    rows = arm_rows(result.summaries, pipeline)
    names = [row.arm for row in rows]
    figures = {
        "over-time": plot_over_time(result.summaries, pipeline, names, _horizon_frame(result),
                                    folder / f"{pipeline}-over-time.png"),
        "flickering": plot_flickering(rows, pipeline, folder / f"{pipeline}-flickering.png"),
    }  # fmt: skip
    frames = {name: result.examples[f"{pipeline}/{name}"] for name in names if f"{pipeline}/{name}" in result.examples}
    if frames and "truth" in result.examples:
        example = result.example
        title = f"{pipeline}, {example['model']}, seed {example['seed']}: \"{example['caption']}\""
        frames["truth"] = result.examples["truth"]
        figures["strip"] = plot_strip(frames, example["start_frame"], title, folder / f"{pipeline}-strip.png")
    return {f"{pipeline}-{name}": path for name, path in figures.items()}


def _horizon_frame(result: ExperimentResult) -> int:
    """World frame where the (first) model's training clip ends."""
    clip = next(iter(result.models.values()))["clip_chunks"]
    return chunk_first_frame(clip)


# ---------------------------------------------------------------------------------------------- markdown
def render_markdown(inputs: ReportInputs) -> str:
    result = inputs.result
    config = result.config
    parts = [
        "# Drift lab: does TokenTrim reduce drift?\n",
        f"_Generated by `{inputs.command}` on {inputs.date}. Do not edit by hand: rerun the command._\n",
    ]
    if inputs.smoke:
        parts.append(
            "> **Smoke run.** A few seeds and a short horizon to exercise the machinery end to end; its numbers "
            "are not evidence for or against TokenTrim.\n"
        )
    parts += ["## What the result is\n", *_gate_lines(inputs)]
    for pipeline in config.pipelines:
        parts.append(f"**{pipeline}**\n")
        parts += [f"- {line}" for line in conclusions(result.summaries, pipeline)]
        parts.append("")
    parts += _methods(inputs)
    parts.append(TRAINING_GUIDE.read_text())
    parts.append("## Results\n")
    for pipeline in config.pipelines:
        parts += _results(inputs, pipeline)
    parts += _limits(inputs)
    return "\n".join(parts) + "\n"


def _gate_lines(inputs: ReportInputs) -> list[str]:
    if not inputs.gates:
        return ["- The quality gate was not run for this report (`--gate-seeds 0`).", ""]
    failing = [name for name, gate in inputs.gates.items() if not gate["pass"]]
    if not failing:
        return [f"- Every model passes the quality gate ({', '.join(inputs.gates)}).", ""]
    return [
        f"- Models failing the quality gate: {', '.join(failing)}. Inside their own training clip they do not "
        "reproduce the world, so their long-horizon differences test the machinery more than drift repair.",
        "",
    ]


def _motion(models: Mapping[str, Mapping[str, Any]]) -> str:
    """How the objects of the models' worlds move (records from before ``world`` was kept: freely)."""
    in_rows = [name for name, record in models.items() if record.get("world", {}).get("lanes")]
    if not in_rows:
        return "Objects move in any direction and pass over one another."
    rows = "objects move sideways in rows of their own and never touch (`WorldSpec.lanes`)"
    if len(in_rows) == len(models):
        return f"The {rows}."
    return f"In the worlds of {', '.join(in_rows)}, {rows}; in the others, objects move in any direction."


def _methods(inputs: ReportInputs) -> list[str]:
    result = inputs.result
    config = result.config
    lines = [
        "## Methods\n",
        "### World\n",
        f"`drift_lab.world` ({DATA_VERSION}): one to three flat-coloured circles and squares bouncing elastically "
        "off the frame's walls on a plain, textured or panning background, with a caption naming what is "
        "visible. Every object's position at every frame is known in closed form, so every generated frame "
        f"can be compared with the truth. {_motion(result.models)}\n",
        "### Models\n",
        "| model | transformer parameters | frame | training clip (chunks) | preset | seed | data version | "
        "transformer steps | final losses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, record in result.models.items():
        training = record["training"]
        height, width = record["default_size"]
        lines.append(
            f"| {name} | {record['transformer_parameters']:,} | {height}x{width} | {record['clip_chunks']} | "
            f"{training.get('preset') or '?'} | {training.get('seed', '?')} | {training.get('data_version', '?')} | "
            f"{training.get('steps', '?')} | {_losses(training.get('losses', {}))} |"
        )
    lines.append("")
    lines += _gate_table(inputs.gates)
    lines += ["### Arms\n", "| pipeline | arm | what it does |", "| --- | --- | --- |"]
    for pipeline, arms in config.arms_for_all().items():
        lines += [f"| {pipeline} | `{arm.name}` | {arm.description} |" for arm in arms]
    lines += [
        "",
        "TokenTrim and `random` are the installed plugins, built through the policy registry. `regenerate`, "
        "`always_trim` and `oracle` wrap a registry-built TokenTrim policy (same trigger rule, budget and "
        "statistics) and change one thing each: no pruning; pruning at every chunk; judging the candidate "
        "against the encoded true chunk instead of the previous chunk. Self Forcing arms inspect the first "
        "denoising step unless named `_final`; Rolling Forcing can only inspect final blocks.\n",
        "`true_cache` is the counterfactual behind TokenTrim's premise: the plain pipeline, except that at the "
        f"control's drift onset (its first generated chunk after the first whose mean object survival is below "
        f"{ONSET_SURVIVAL:g}) every cached frame's keys and values are rewritten from the true chunks, through the "
        "pipeline's own cache-writing call. If that does not reduce drift, the drift is not carried by the cache "
        "and pruning the cache cannot be what repairs it.\n",
        "Injected corruption, a positive control with known truth at the token level, is a separate study: "
        "`python -m drift_lab.injection_report` (`docs/drift-lab-injection.md`).\n",
        "### Rollouts\n",
    ]
    first = next(iter(result.models.values()))
    lines += [
        f"Each rollout starts from {config.prefill_chunks} true chunk(s) of the scene, encoded by the model's own "
        "VAE and prefilled into the KV cache (`StreamBase.prefill`), and runs to "
        f"{config.horizon_multiple}x the model's training clip ({config.horizon_multiple * first['clip_chunks']} "
        f"chunks for a {first['clip_chunks']}-chunk clip). Scenes: seeds {EVALUATION_SEED_OFFSET} to "
        f"{EVALUATION_SEED_OFFSET + config.seeds - 1} ({config.seeds} per model, never used in training), "
        "the same for every arm, with the same keyed noise (`SeededNoise(seed)`) and the caption as prompt. "
        "Frames are decoded with the streaming VAE decoder after decoding the prefilled truth, so the "
        "decoder's causal context is the true past; only generated frames are measured.\n",
        "Pipeline options per model: "
        + "; ".join(f"{name}: {record['pipeline_options']}" for name, record in result.models.items())
        + ".\n",
        "### Metrics\n",
        "Per frame against the truth (`drift_lab.measure`): object-count error (|detected - true|), survival "
        "(fraction of true objects found near their true centroid in their colour), colour error of found "
        "objects (RGB distance / (255 sqrt 3)), centroid error of found objects (/ frame diagonal), "
        "background deviation (mean absolute error on pixels clear of every object), PSNR beside the "
        "background-only floor (the PSNR of a video with every object dropped), and VBench's temporal "
        "flickering beside the truth's own value (it rewards frozen video: higher is not better per se).\n",
        f"Late horizon: chunks from {LATE_FRACTION:.0%} of the rollout on. Differences are arm minus `{CONTROL}`, "
        "paired by model and scene seed, with a 95% percentile bootstrap over pairs "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); pairs where either side is undefined (no "
        "object found, for colour and centroid error) are dropped. Trigger rate: % of generated chunks on "
        "which the policy triggered. Wall time: the sum of the engine's chunk times, relative to `none`'s.\n",
        "### What was run\n",
        f"`{inputs.command}` on {inputs.date}: {len(result.summaries)} rollouts in {result.seconds:.0f} s on "
        f"{config.device} ({platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}).\n",
    ]
    return lines


def _gate_table(gates: dict[str, dict[str, Any]]) -> list[str]:
    if not gates:
        return []
    header = " | ".join(f"{check.metric} ({'<' if check.below else '>'} {check.threshold:g})" for check in CHECKS)
    lines = [
        "Quality gate (inside the training clip, plain Self Forcing, held-out scenes; `python -m drift_lab.gate`):",
        "",
        f"| model | seeds | {header} | verdict |",
        "| --- | --- | " + " | ".join("---" for _ in CHECKS) + " | --- |",
    ]
    for name, gate in gates.items():
        entries = [gate["checks"][check.metric] for check in CHECKS]
        cells = " | ".join(f"{_fmt(entry['value'])} {'pass' if entry['pass'] else 'FAIL'}" for entry in entries)
        lines.append(f"| {name} | {gate['seeds']} | {cells} | {'pass' if gate['pass'] else 'FAIL'} |")
    return [*lines, ""]


def _losses(losses: dict[str, float]) -> str:
    return ", ".join(f"{name} {_fmt(value)}" for name, value in losses.items()) or "?"


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value != value else f"{value:.{digits}g}"  # NaN != NaN


def _interval(interval: Interval) -> str:
    if interval.n == 0:
        return "n/a"
    mark = " *" if interval.excludes_zero else ""
    return f"{interval.mean:+.3g} [{interval.low:+.3g}, {interval.high:+.3g}]{mark}"


def _results(inputs: ReportInputs, pipeline: str) -> list[str]:
    rows = arm_rows(inputs.result.summaries, pipeline)
    compared = list(ORIENTATION)
    lines = [
        f"### {pipeline}\n",
        "Late-horizon means (over models and seeds):\n",
        "| arm | rollouts | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    lines += [f"| `{r.arm}` | {r.rollouts} | " + " | ".join(_fmt(r.late[m]) for m in METRICS) + " |" for r in rows]
    lines += [
        "",
        f"Arm minus `{CONTROL}`, late horizon, mean [95% paired bootstrap interval] (* excludes 0):\n",
        "| arm | " + " | ".join(f"{LABELS[m]} ({'higher' if ORIENTATION[m] > 0 else 'lower'} is better)"
                             for m in compared) + " |",
        "| --- | " + " | ".join("---" for _ in compared) + " |",
    ]  # fmt: skip
    lines += [f"| `{r.arm}` | " + " | ".join(_interval(r.versus_control[m]) for m in compared) + " |"
              for r in rows if r.arm != CONTROL]  # fmt: skip
    lines += [
        "",
        "Policy activity:\n",
        "| arm | chunks triggering (%) | regenerations / chunk | tokens removed / chunk | wall time vs none | "
        "temporal flickering (truth) | video equals none |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_activity_row(row) for row in rows]
    lines.append("")
    for name, caption in (("over-time", "Metrics over time"), ("flickering", "Temporal flickering"),
                          ("strip", "Example frames per arm (last row: the truth)")):  # fmt: skip
        path = inputs.figures.get(f"{pipeline}-{name}")
        if path is not None:
            lines += [f"![{caption} ({pipeline})]({path.as_posix()})", ""]
    return lines


def _activity_row(row: ArmRow) -> str:
    equals = "" if row.equals_control is None else ("yes" if row.equals_control else "**NO**")
    return (
        f"| `{row.arm}` | {_fmt(row.trigger_percent, 3)} | {_fmt(row.regenerations_per_chunk, 3)} | "
        f"{_fmt(row.tokens_removed_per_chunk, 4)} | {_fmt(row.wall_ratio, 3)} | "
        f"{_fmt(row.flickering)} ({_fmt(row.truth_flickering)}) | {equals} |"
    )


def _limits(inputs: ReportInputs) -> list[str]:
    config = inputs.result.config
    lines = ["## Limits\n"]
    if inputs.smoke or config.seeds < 32:
        lines.append(f"- {config.seeds} seed(s) per model: too few for the intervals to mean much (the plan "
                     "is at least 32).")  # fmt: skip
    if config.horizon_multiple < 8:
        lines.append(f"- Rollouts of {config.horizon_multiple}x the training clip, short of the planned 8x.")
    failing = [name for name, gate in inputs.gates.items() if not gate["pass"]]
    if failing:
        lines.append(f"- {', '.join(failing)} fail the quality gate (see Models).")
    lines += [
        "- The world is deliberately simple (flat shapes, known motion); drift in open-domain video has more "
        "forms than these metrics see, and a small model trained on this world is not Wan 2.1.",
        "- Pairs are (model, seed) and are resampled as if independent; rollouts of one model share its "
        "weights, so with few models the interval understates between-model variation.",
        "- Colour and centroid errors are over found objects only; an arm that loses objects can look better "
        "on them. Read them with survival and count error.",
        "- Temporal flickering rewards frozen video; it is reported beside the truth's own value, not as a "
        "score to maximise.",
        "- `regenerate` runs the same noise from the same cache, so its video equals `none`'s by construction "
        "(checked above); it isolates the cost of regenerating, and TokenTrim minus it is the effect of pruning.",
        "- Conclusions are drawn only where an interval excludes 0; 'no detectable difference' is not evidence "
        "of no effect at this sample size.",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
