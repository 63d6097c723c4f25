"""From rollout summaries to the report's numbers: per-arm tables, paired contrasts and computed conclusions.

Nothing here is hand-written judgement: every sentence of "What the result is" is produced from intervals
and rates by the rules below, so the report says only what its numbers say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drift_lab.arms import CONTROL, arm_names
from drift_lab.experiment import RolloutSummary
from drift_lab.statistics import (
    MIN_PAIRS,
    Interval,
    paired_bootstrap,
    paired_differences,
    rate_percent,
    ratio,
)

# Compared metrics and their direction: +1 when higher is better, -1 when lower is better.
ORIENTATION: dict[str, int] = {
    "count_error": -1,
    "survival": 1,
    "colour_error": -1,
    "centroid_error": -1,
    "background_deviation": -1,
    "psnr": 1,
}
LABELS: dict[str, str] = {
    "count_error": "object-count error",
    "survival": "object survival",
    "colour_error": "colour error",
    "centroid_error": "centroid error",
    "background_deviation": "background deviation",
    "psnr": "PSNR (dB)",
    "psnr_background_floor": "background-only PSNR floor (dB)",
}
# The true-cache counterfactual arm (``drift_lab.arms``).
COUNTERFACTUAL = "true_cache"
# Below this share of triggering chunks a policy barely acted: its differences cannot be attributed to it.
MIN_TRIGGER_PERCENT = 2.0
# Per pipeline: the TokenTrim arm and the arms it is contrasted with (besides the control). Against
# ``*_flowmo`` (TokenTrim + FlowMo, the paper's full method) it is the paper's "w/o FlowMo" ablation.
FOCUS: dict[str, tuple[str, tuple[str, ...]]] = {
    "self_forcing": (
        "tokentrim", ("random", "regenerate", "always_trim", "oracle", "tokentrim_final", "tokentrim_flowmo")
    ),
    "rolling_forcing": (
        "tokentrim_final",
        ("random_final", "regenerate_final", "always_trim_final", "oracle_final", "tokentrim_final_flowmo"),
    ),
}


@dataclass(frozen=True)
class ArmRow:
    """One arm of one pipeline: late-horizon means, paired intervals vs the control, and its activity."""

    pipeline: str
    arm: str
    rollouts: int
    late: dict[str, float]
    versus_control: dict[str, Interval]
    trigger_percent: float
    regenerations_per_chunk: float
    tokens_removed_per_chunk: float
    wall_ratio: float
    flickering: float
    truth_flickering: float
    equals_control: bool | None


def late_values(summaries: Sequence[RolloutSummary], metric: str) -> dict[tuple[str, int], float]:
    """Late-horizon mean of ``metric`` per (model, seed) pair."""
    return {summary.pair: summary.late[metric] for summary in summaries}


def contrast(arm: Sequence[RolloutSummary], baseline: Sequence[RolloutSummary], metric: str) -> Interval:
    """Paired bootstrap interval of (arm - baseline) late-horizon means of ``metric``."""
    return paired_bootstrap(paired_differences(late_values(arm, metric), late_values(baseline, metric)))


def _mean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else math.nan


def arm_row(pipeline: str, arm: str, summaries: Sequence[RolloutSummary], control: Sequence[RolloutSummary]) -> ArmRow:
    """The table row of ``arm`` (its rollouts ``summaries``) against the ``control``'s rollouts."""
    if not summaries:
        raise ValueError(f"no rollouts of {pipeline}/{arm}")
    chunks = [flag for summary in summaries for flag in summary.triggered]
    wall = {s.pair: sum(s.chunk_seconds) for s in summaries}
    control_wall = {s.pair: sum(s.chunk_seconds) for s in control if s.pair in wall}
    checks = [summary.equals_control for summary in summaries if summary.equals_control is not None]
    return ArmRow(
        pipeline=pipeline,
        arm=arm,
        rollouts=len(summaries),
        late={metric: _mean([s.late[metric] for s in summaries]) for metric in LABELS},
        versus_control={metric: contrast(summaries, control, metric) for metric in ORIENTATION},
        trigger_percent=rate_percent(chunks),
        regenerations_per_chunk=_mean([r for s in summaries for r in s.regenerations]),
        tokens_removed_per_chunk=_mean([t for s in summaries for t in s.tokens_removed]),
        wall_ratio=ratio(sum(wall.values()), sum(control_wall.values())),
        flickering=_mean([s.flickering for s in summaries]),
        truth_flickering=_mean([s.truth_flickering for s in summaries]),
        equals_control=all(checks) if checks else None,
    )


def arm_rows(summaries: Sequence[RolloutSummary], pipeline: str) -> list[ArmRow]:
    """Rows of every arm run on ``pipeline``, in the arm table's order, then arms outside the table as run."""
    ran = list(dict.fromkeys(s.arm for s in summaries if s.pipeline == pipeline))
    table = arm_names(pipeline)
    order = [name for name in table if name in ran] + [name for name in ran if name not in table]
    control = [s for s in summaries if s.pipeline == pipeline and s.arm == CONTROL]
    return [
        arm_row(pipeline, name, [s for s in summaries if s.pipeline == pipeline and s.arm == name], control)
        for name in order
    ]


def direction(metric: str, interval: Interval) -> str | None:
    """``better`` or ``worse`` when the interval excludes 0 (from enough pairs), by the metric's orientation."""
    if not interval.excludes_zero:
        return None
    return "better" if (interval.mean > 0) == (ORIENTATION[metric] > 0) else "worse"


def describe_interval(metric: str, interval: Interval) -> str:
    """The verdict on one metric's interval, in words, with the interval."""
    if not interval.enough_pairs:
        return f"{LABELS[metric]}: too few pairs ({interval.n} < {MIN_PAIRS})"
    span = f"{interval.mean:+.4g} [{interval.low:+.4g}, {interval.high:+.4g}]"
    return f"{LABELS[metric]}: {direction(metric, interval) or 'no detectable difference'} ({span})"


def differences(summaries: Sequence[RolloutSummary], pipeline: str, arm: str, baseline: str) -> str:
    """One sentence: the metrics on which ``arm`` differs detectably from ``baseline`` (paired by model, seed)."""
    left = [s for s in summaries if s.pipeline == pipeline and s.arm == arm]
    right = [s for s in summaries if s.pipeline == pipeline and s.arm == baseline]
    intervals = {metric: contrast(left, right, metric) for metric in ORIENTATION}
    pairs = max(interval.n for interval in intervals.values())
    if pairs < MIN_PAIRS:
        return f"too few pairs ({pairs} < {MIN_PAIRS}) to claim any difference"
    found = [describe_interval(m, interval) for m, interval in intervals.items() if direction(m, interval)]
    return "; ".join(found) if found else "no metric differs detectably"


def conclusions(summaries: Sequence[RolloutSummary], pipeline: str) -> list[str]:
    """The sentences of "What the result is" for one pipeline, computed from the numbers."""
    focus, others = FOCUS[pipeline]
    ran = {s.arm for s in summaries if s.pipeline == pipeline}
    if focus not in ran or CONTROL not in ran:
        return [f"{pipeline}: `{focus}` and `{CONTROL}` were not both run; nothing to conclude."]
    rows = {row.arm: row for row in arm_rows(summaries, pipeline)}
    focus_row = rows[focus]
    lines = [
        f"`{focus}` triggered on {focus_row.trigger_percent:.1f}% of generated chunks "
        f"({focus_row.rollouts} rollout{'' if focus_row.rollouts == 1 else 's'}), at {focus_row.wall_ratio:.2f}x "
        f"the wall time of `{CONTROL}`."
    ]
    if not focus_row.trigger_percent >= MIN_TRIGGER_PERCENT:
        lines.append(
            f"That is below {MIN_TRIGGER_PERCENT:g}% of chunks: the policy barely acted, so no difference below can "
            "be attributed to it."
        )
    for baseline in (CONTROL, *others):
        if baseline in ran and baseline != focus:
            found = differences(summaries, pipeline, focus, baseline)
            lines.append(f"`{focus}` vs `{baseline}` (late horizon, 95% paired bootstrap): {found}.")
    for name, row in rows.items():
        if row.equals_control is not None:
            state = "equals" if row.equals_control else "does NOT equal"
            lines.append(f"`{name}` {state} `{CONTROL}` exactly in every rollout (same noise, same cache).")
    oracle = next((name for name in rows if name.startswith("oracle")), None)
    if oracle is not None:
        found = differences(summaries, pipeline, oracle, CONTROL)
        lines.append(f"`{oracle}` vs `{CONTROL}` (the headroom of trigger-and-prune with a perfect detector): {found}.")
    if COUNTERFACTUAL in rows:
        lines += counterfactual_conclusion(summaries, pipeline)
    return lines


def counterfactual_conclusion(summaries: Sequence[RolloutSummary], pipeline: str) -> list[str]:
    """Whether rewriting the cache from the truth at the drift onset reduces drift: TokenTrim's premise."""
    chosen = [s for s in summaries if s.pipeline == pipeline and s.arm == COUNTERFACTUAL]
    rewritten = sum(s.onset is not None for s in chosen)
    control = [s for s in summaries if s.pipeline == pipeline and s.arm == CONTROL]
    intervals = {metric: contrast(chosen, control, metric) for metric in ("survival", "psnr")}
    found = differences(summaries, pipeline, COUNTERFACTUAL, CONTROL)
    line = (f"`{COUNTERFACTUAL}` (cache rewritten from the true chunks at the drift onset, in {rewritten} of "
            f"{len(chosen)} rollouts; the rest never drifted that far) vs `{CONTROL}`: {found}.")  # fmt: skip
    if rewritten < MIN_PAIRS:
        verdict = "Too few rollouts drifted to test TokenTrim's premise (that drift is carried by the cache)."
    elif any(direction(metric, interval) == "better" for metric, interval in intervals.items()):
        verdict = ("A true cache reduces the drift: it is carried, at least partly, by the cache, so TokenTrim's "
                   "premise holds for this model.")  # fmt: skip
    else:
        verdict = ("A true cache does not reduce the drift: it is not carried by the cache, and TokenTrim's premise "
                   "does not hold for this model.")  # fmt: skip
    return [line, verdict]


def over_time(
    summaries: Sequence[RolloutSummary], pipeline: str, arm: str, metric: str
) -> tuple[list[int], list[float]]:
    """Per generated chunk: its first world frame and the mean of ``metric`` over the arm's rollouts."""
    chosen = [s for s in summaries if s.pipeline == pipeline and s.arm == arm]
    if not chosen:
        return [], []
    columns = zip(*(s.chunk_metrics[metric] for s in chosen), strict=True)
    return list(chosen[0].chunk_start_frames), [_mean(column) for column in columns]
