"""``python -m drift_lab.injection_report``: the injection suite, its predictions and which of them held.

The predictions are fixed here, in code, and written into the report (and its JSON) before any rollout runs:
the report file first holds them with "results pending", then is rewritten with the results. Each prediction
carries its own test, computed from the numbers; none is judged by hand.

Intervals are paired percentile-bootstrap intervals over scene seeds (``drift_lab.statistics``): an arm and the
control corrupted the same way on the same seed form a pair.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drift_lab.arms import CONTROL
from drift_lab.experiment import apply_threads, json_ready
from drift_lab.figures import plot_strip
from drift_lab.injection import Region
from drift_lab.injection_suite import (
    ORACLE,
    SCENARIOS,
    InjectionConfig,
    InjectionResult,
    drift_auc,
    later_divergence,
    precision_recall,
    run_injection_suite,
    select,
    trigger_rate,
)
from drift_lab.statistics import Interval, paired_bootstrap, paired_differences

COHERENT = "cache_patch"
NOISE = "cache_noise"
EMITTED = "emitted_patch"


@dataclass(frozen=True)
class Prediction:
    """A claim made before the results, and the test that decides it (``None``: the data cannot decide)."""

    key: str
    text: str
    test: Callable[[InjectionResult], tuple[bool | None, str]]


def _later(result: InjectionResult, scenario: str, arm: str, dose: float) -> dict[tuple[str, int], float]:
    chunk = result.config.chunk
    return {(r.model, r.seed): later_divergence(r, chunk) for r in select(result, scenario, arm, dose)}


def contrast(result: InjectionResult, scenario: str, arm: str, baseline: str, dose: float | None = None) -> Interval:
    """Paired interval of later divergence, ``arm`` minus ``baseline``, at ``dose`` (default: the top dose)."""
    dose = max(result.config.doses) if dose is None else dose
    return paired_bootstrap(
        paired_differences(_later(result, scenario, arm, dose), _later(result, scenario, baseline, dose))
    )


def _interval(interval: Interval) -> str:
    if interval.n == 0 or not math.isfinite(interval.mean):
        return "n/a"
    return f"{interval.mean:+.3g} [{interval.low:+.3g}, {interval.high:+.3g}] (n={interval.n})"


def _below_zero(interval: Interval) -> bool:
    return interval.excludes_zero and interval.high < 0


def _has(result: InjectionResult, scenario: str, *arms: str) -> bool:
    return scenario in result.config.scenarios and all(arm in _arms(result) for arm in arms)


def _arms(result: InjectionResult) -> list[str]:
    return list(dict.fromkeys(r.arm for r in result.rollouts))


def _undecided(what: str) -> tuple[None, str]:
    return None, f"not run ({what})"


def _rates_rise(result: InjectionResult) -> tuple[bool | None, str]:
    if not _has(result, COHERENT, "tokentrim") or len(result.config.doses) < 2:
        return _undecided("needs cache_patch, tokentrim and two doses")
    doses = sorted(result.config.doses)
    rates = [trigger_rate(select(result, COHERENT, "tokentrim", dose), result.config.chunk) for dose in doses]
    rising = all(b >= a for a, b in itertools.pairwise(rates)) and rates[-1] > rates[0]
    return rising, "tokentrim trigger rate by dose " + ", ".join(
        f"{d:g}: {r:.0%}" for d, r in zip(doses, rates, strict=True)
    )


def _zero_dose_exact(result: InjectionResult) -> tuple[bool | None, str]:
    if 0.0 not in result.config.doses:
        return _undecided("no zero dose")
    zero = [r for r in result.rollouts if r.dose == 0.0 and r.scenario != "clean" and r.arm == CONTROL]
    exact = sum(r.equals_twin for r in zero)
    return exact == len(zero), f"{exact}/{len(zero)} zero-dose control rollouts bit-identical to the uncorrupted twin"


def _regenerate_inert(result: InjectionResult) -> tuple[bool | None, str]:
    if "regenerate" not in _arms(result):
        return _undecided("no regenerate arm")
    control = {(r.model, r.seed, r.scenario, r.dose): r.digest for r in result.rollouts if r.arm == CONTROL}
    regenerate = [r for r in result.rollouts if r.arm == "regenerate"]
    same = sum(control[(r.model, r.seed, r.scenario, r.dose)] == r.digest for r in regenerate)
    return same == len(regenerate), f"{same}/{len(regenerate)} regenerate rollouts bit-identical to the control's"


def _beats(scenario: str, arm: str, baseline: str) -> Callable[[InjectionResult], tuple[bool | None, str]]:
    def test(result: InjectionResult) -> tuple[bool | None, str]:
        if not _has(result, scenario, arm, baseline):
            return _undecided(f"needs {scenario}, {arm} and {baseline}")
        interval = contrast(result, scenario, arm, baseline)
        return _below_zero(interval), f"later divergence, {arm} - {baseline} on {scenario}: {_interval(interval)}"

    return test


def _oracle_bound(result: InjectionResult) -> tuple[bool | None, str]:
    if not _has(result, COHERENT, ORACLE, "tokentrim"):
        return _undecided("needs the oracle and tokentrim")
    interval = contrast(result, COHERENT, ORACLE, "tokentrim")
    return bool(interval.mean <= 0 or not interval.excludes_zero), (
        f"later divergence, oracle - tokentrim on {COHERENT}: {_interval(interval)}"
    )


def _noise_no_gain(result: InjectionResult) -> tuple[bool | None, str]:
    if not _has(result, NOISE, "tokentrim"):
        return _undecided("needs cache_noise and tokentrim")
    interval = contrast(result, NOISE, "tokentrim", CONTROL)
    return not _below_zero(interval), f"later divergence, tokentrim - none on {NOISE}: {_interval(interval)}"


def _clean_cost(result: InjectionResult) -> tuple[bool | None, str]:
    if "tokentrim" not in _arms(result):
        return _undecided("no tokentrim arm")
    interval = contrast(result, "clean", "tokentrim", CONTROL, dose=0.0)
    rate = _false_trigger_rate(result, "tokentrim")
    costs = interval.excludes_zero and interval.low > 0
    return costs, f"clean runs: triggers in {rate:.0%} of chunks; divergence from the twin {_interval(interval)}"


def _auc_above_chance(result: InjectionResult) -> tuple[bool | None, str]:
    if not _has(result, COHERENT, "tokentrim"):
        return _undecided("needs cache_patch and tokentrim")
    top = max(result.config.doses)
    values = _per_seed_auc(result, COHERENT, "tokentrim", top)
    if not values:
        return _undecided("no drift recorded")
    interval = paired_bootstrap(np.asarray(values) - 0.5)
    held = interval.excludes_zero and interval.low > 0
    return (
        held,
        f"ROC AUC of per-token drift at dose {top:g}: {0.5 + interval.mean:.3f} (AUC - 0.5: {_interval(interval)})",
    )


def _per_seed_auc(result: InjectionResult, scenario: str, arm: str, dose: float) -> list[float]:
    values = []
    for rollout in select(result, scenario, arm, dose):
        value = drift_auc([rollout], result.region_positions[rollout.model])
        if math.isfinite(value):
            values.append(value)
    return values


PREDICTIONS: tuple[Prediction, ...] = (
    Prediction("zero_dose", "Injecting a zero dose reproduces the uncorrupted run bit for bit.", _zero_dose_exact),
    Prediction("regenerate", "Regenerating without pruning changes no video (same noise, cache).", _regenerate_inert),
    Prediction("dose", "TokenTrim's trigger rate after a coherent cache patch rises with the dose.", _rates_rise),
    Prediction("auc", "Per-token drift ranks the patched positions above the rest (ROC AUC > 0.5).",
               _auc_above_chance),
    Prediction("beats_none", "Where a coherent patch in the cache is copied forward, TokenTrim lowers the later "
               "divergence from the uncorrupted twin below the plain pipeline's.",
               _beats(COHERENT, "tokentrim", CONTROL)),
    Prediction("beats_random", "There TokenTrim also beats random pruning at the same trigger and budget.",
               _beats(COHERENT, "tokentrim", "random")),
    Prediction("oracle", "Pruning exactly the injected positions does at least as well as TokenTrim.", _oracle_bound),
    Prediction("first_step", "On a corrupted emitted chunk, the first-step candidate does better than the final "
               "one (the final candidate triggers on the corrupted chunk itself, then its statistics hide the "
               "propagation).", _beats(EMITTED, "tokentrim", "tokentrim_final")),
    Prediction("noise", "On unstructured noise in the cache TokenTrim gains nothing (the model does not copy it).",
               _noise_no_gain),
    Prediction("clean_cost", "On uncorrupted runs TokenTrim's false triggers cost something: its video diverges "
               "from the plain pipeline's.", _clean_cost),
)  # fmt: skip


def _false_trigger_rate(result: InjectionResult, arm: str) -> float:
    flags = [t for r in select(result, "clean", arm) for t in r.triggered]
    return float(np.mean(flags)) if flags else math.nan


# ---------------------------------------------------------------------------------------------- markdown
def predictions_section(outcomes: dict[str, tuple[bool | None, str]] | None) -> list[str]:
    """The predictions, each with its outcome once ``outcomes`` are known."""
    lines = ["## Predictions (fixed in `drift_lab/injection_report.py` and written before the results)", ""]
    for number, prediction in enumerate(PREDICTIONS, start=1):
        if outcomes is None:
            lines.append(f"{number}. {prediction.text} *(results pending)*")
            continue
        held, evidence = outcomes[prediction.key]
        verdict = {True: "**held**", False: "**did not hold**", None: "**undecided**"}[held]
        lines.append(f"{number}. {prediction.text} {verdict}: {evidence}.")
    return [*lines, ""]


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"


def scenario_table(result: InjectionResult, scenario: str) -> list[str]:
    """Per dose and arm: trigger rate, later divergence and its contrast with none, precision/recall, AUC, time."""
    chunk = result.config.chunk
    lines = [
        f"### `{scenario}`",
        "",
        "| dose | arm | trigger rate | later divergence | vs none | precision | recall | drift AUC | s/rollout |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dose in sorted(result.config.doses):
        for arm in _arms(result):
            rollouts = select(result, scenario, arm, dose)
            if not rollouts:
                continue
            positions = result.region_positions[rollouts[0].model]
            precision, recall, pruned = precision_recall(rollouts, positions)
            later = float(np.nanmean([later_divergence(r, chunk) for r in rollouts]))
            versus = "" if arm == CONTROL else _interval(contrast(result, scenario, arm, CONTROL, dose))
            seconds = float(np.mean([r.seconds for r in rollouts]))
            lines.append(
                f"| {dose:g} | {arm} | {trigger_rate(rollouts, chunk):.0%} | {_fmt(later)} | {versus} | "
                f"{_fmt(precision)} | {_fmt(recall)} (n={pruned}) | {_fmt(drift_auc(rollouts, positions))} | "
                f"{seconds:.2f} |"
            )
    return [*lines, ""]


def time_course(result: InjectionResult, scenario: str) -> list[str]:
    """Mean latent divergence per chunk at the top dose (and pixel PSNR vs the twin where decoded)."""
    top = max(result.config.doses)
    arms = _arms(result)
    chunks = select(result, scenario, CONTROL, top)[0].chunks
    header = "| arm | " + " | ".join(f"chunk {c}" for c in chunks) + " |"
    lines = [f"Time course on `{scenario}` at dose {top:g} (latent MSE vs the twin; PSNR dB vs the twin's frames):",
             "", header, "|---|" + "---|" * len(chunks)]  # fmt: skip
    for arm in arms:
        rollouts = select(result, scenario, arm, top)
        divergence = np.mean([r.divergence for r in rollouts], axis=0)
        pixels = [r.pixel_psnr for r in rollouts if r.pixel_psnr]
        psnr = np.mean(pixels, axis=0) if pixels else [math.nan] * len(chunks)
        cells = [
            f"{_fmt(d)} / {_fmt(p, 3)} dB" if math.isfinite(p) else _fmt(d)
            for d, p in zip(divergence, psnr, strict=True)
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def clean_table(result: InjectionResult) -> list[str]:
    lines = ["### Uncorrupted runs: the cost of false triggers", "",
             "| arm | chunks triggered | divergence from the plain pipeline (mean over later chunks) | vs none |",
             "|---|---|---|---|"]  # fmt: skip
    for arm in _arms(result):
        rollouts = select(result, "clean", arm)
        later = float(np.nanmean([later_divergence(r, result.config.chunk) for r in rollouts]))
        versus = "" if arm == CONTROL else _interval(contrast(result, "clean", arm, CONTROL, 0.0))
        lines.append(f"| {arm} | {_false_trigger_rate(result, arm):.1%} | {_fmt(later)} | {versus} |")
    return [*lines, ""]


def verdict(outcomes: dict[str, tuple[bool | None, str]]) -> list[str]:
    """The verdict on TokenTrim against injected corruption, from the predictions' outcomes."""
    removes = outcomes["beats_none"][0]
    targeted = outcomes["beats_random"][0]
    if removes and targeted:
        text = ("TokenTrim removes injected corruption that the model copies forward, and it does so by finding "
                "the corrupted positions, not merely by pruning something: it beats both the plain pipeline and "
                "random pruning at the same budget.")  # fmt: skip
    elif removes:
        text = (
            "TokenTrim lowers the copied error below the plain pipeline's, but not significantly below random "
            "pruning at the same trigger and budget: the gain cannot be credited to where it prunes."
        )
    elif removes is None:
        text = "Undecided: the suite was not run with the arms and scenarios the verdict needs."
    else:
        text = (
            "TokenTrim does not measurably lower the error copied forward from a coherent patch in the cache "
            "on this model."
        )
    return ["## Verdict (computed from the predictions above)", "", text, ""]


def render_markdown(result: InjectionResult | None, config: InjectionConfig, command: str, date: str,
                    strip: str | None = None) -> str:  # fmt: skip
    region = config.region
    lines = [
        "# Drift lab: injected corruption (a positive control for cache policies)",
        "",
        f"Generated by `{command}` on {date}; raw per-rollout results in the JSON beside this file. Methods: "
        "`drift_lab/injection.py`; grid: `drift_lab/injection_suite.py`.",
        "",
        f"Setup: Self Forcing; {config.prefill_chunks} true chunk(s) prefilled; chunk {config.chunk} is corrupted "
        f"at token rows {region.top}..{region.top + region.height - 1}, columns {region.left}.."
        f"{region.left + region.width - 1} (every frame of the chunk); {config.after} chunks follow; {config.seeds} "
        f"scene seeds per model; doses {', '.join(f'{d:g}' for d in config.doses)}. *Later divergence* is the mean "
        f"squared latent difference from the same seed's uncorrupted plain rollout over the chunks after the "
        f"injected one; a trigger *responds* when it falls within 2 chunks after it; precision and recall compare "
        f"the positions pruned at that trigger with the injected ones; *drift AUC* ranks the injected positions by "
        f"the per-token drift of the first candidate after the injection. Intervals: 95% paired bootstrap over seeds.",
        "",
    ]
    outcomes = None if result is None else {p.key: p.test(result) for p in PREDICTIONS}
    lines += predictions_section(outcomes)
    if result is None or outcomes is None:
        return "\n".join(lines)
    lines += verdict(outcomes)
    lines += ["## Results", ""]
    if strip:
        lines += [f"![example]({strip})", "", "Example (first seed, top dose): the injected region is outlined in "
                  "white from the corrupted chunk on.", ""]  # fmt: skip
    for scenario in [s for s in SCENARIOS if s in config.scenarios]:
        lines += scenario_table(result, scenario) + time_course(result, scenario)
    lines += clean_table(result)
    lines += [f"Wall time of the suite: {result.seconds / 60:.1f} min.", ""]
    return "\n".join(lines)


def outline_region(frames: np.ndarray, region: Region, grid: tuple[int, int], rows: slice) -> np.ndarray:
    """A copy of ``frames`` with the region's pixel rectangle outlined in white on the frames ``rows``."""
    marked = frames.copy()
    height, width = frames.shape[1] // grid[0], frames.shape[2] // grid[1]
    top, left = region.top * height, region.left * width
    bottom, right = top + region.height * height - 1, left + region.width * width - 1
    view = marked[rows]
    view[:, top, left : right + 1] = view[:, bottom, left : right + 1] = 255
    view[:, top : bottom + 1, left] = view[:, top : bottom + 1, right] = 255
    return marked


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.injection_report", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="lab model folders (Self Forcing rollouts of each)")
    parser.add_argument("--seeds", type=int, default=16, help="scene seeds per model (default 16)")
    parser.add_argument("--doses", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], help="doses in [0, 1]")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--chunk", type=int, default=4, help="the injected chunk (default 4: after the warm-up)")
    parser.add_argument("--after", type=int, default=6, help="chunks generated after it (default 6)")
    parser.add_argument("--region", type=int, nargs=4, default=[1, 1, 1, 2], metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
                        help="the injected token rectangle (default 1 1 1 2: two tokens)")  # fmt: skip
    parser.add_argument("--decode-seeds", type=int, default=4, help="seeds decoded for pixel divergence (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--out", default="docs/drift-lab-injection.md", help="the markdown report (JSON beside it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    try:
        config = InjectionConfig(
            models=tuple(args.models), seeds=args.seeds, scenarios=tuple(args.scenarios), doses=tuple(args.doses),
            chunk=args.chunk, after=args.after, region=Region(*args.region), decode_seeds=args.decode_seeds,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    out = Path(args.out)
    command = shlex.join(["python", "-m", "drift_lab.injection_report", *argv])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(None, config, command, date))  # the predictions, before any result exists
    result = run_injection_suite(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    strip = _strip(result, out)
    out.write_text(render_markdown(result, config, command, date, strip))
    outcomes = {p.key: {"text": p.text, "held": p.test(result)[0], "evidence": p.test(result)[1]} for p in PREDICTIONS}
    payload = {"command": command, "date": date, "predictions": outcomes, **result.as_json()}
    out.with_suffix(".json").write_text(json.dumps(json_ready(payload), indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')} in {result.seconds:.0f} s")
    return 0


def _strip(result: InjectionResult, out: Path) -> str | None:
    """The example strip (twin and the coherent cache patch's arms, region outlined); its path from ``out``."""
    if not result.examples:
        return None
    config = result.config
    tokens = result.grids[result.example["model"]]
    first = config.chunk - config.prefill_chunks
    video_length = next(iter(result.examples.values())).shape[0]
    per_chunk = video_length // (config.total_chunks - config.prefill_chunks)
    rows = slice(first * per_chunk, None)  # from the corrupted chunk on
    names = ["twin", *(name for name in result.examples if name.startswith(f"{COHERENT}/"))]
    frames = {name: outline_region(result.examples[name], config.region, tokens, rows) for name in names}
    title = f"{COHERENT} at the top dose, seed {result.example['seed']}"
    path = plot_strip(frames, result.example["start_frame"], title, out.with_suffix("") / "injection-strip.png")
    return str(path.relative_to(out.parent))


if __name__ == "__main__":
    raise SystemExit(main())
