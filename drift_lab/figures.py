"""The report's figures: metrics over time, flickering, example strips.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no display, no global figure state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from drift_lab.analysis import LABELS, ArmRow, over_time
from drift_lab.arms import CONTROL
from drift_lab.experiment import RolloutSummary

TIME_METRICS: tuple[str, ...] = (
    "count_error",
    "survival",
    "colour_error",
    "centroid_error",
    "background_deviation",
    "psnr",
)
STRIP_COLUMNS = 8
DPI = 110


def plot_over_time(
    summaries: Sequence[RolloutSummary], pipeline: str, arms: Sequence[str], horizon_frame: int, path: Path
) -> Path:
    """One panel per metric: the mean over rollouts per generated chunk, one line per arm.

    The PSNR panel adds the background-only floor (dashed); a dotted line marks the end of the training clip.
    """
    figure = Figure(figsize=(13, 6.5), layout="constrained")
    axes = figure.subplots(2, 3)
    for axis, metric in zip(axes.flat, TIME_METRICS, strict=True):
        defined = False
        for arm in arms:
            frames, values = over_time(summaries, pipeline, arm, metric)
            axis.plot(frames, values, label=arm, linewidth=2.0 if arm == CONTROL else 1.2)
            defined = defined or bool(np.isfinite(values).any())
        if metric == "psnr":
            frames, floor = over_time(summaries, pipeline, CONTROL, "psnr_background_floor")
            axis.plot(frames, floor, "k--", linewidth=1.0, label="background-only floor")
        if not defined:  # e.g. colour error when no object is ever found
            axis.text(0.5, 0.5, "undefined: no object found", ha="center", va="center", transform=axis.transAxes)
        if frames:
            axis.set_xlim(min(frames[0], horizon_frame), frames[-1])
        axis.axvline(horizon_frame, color="gray", linestyle=":", linewidth=1.0)
        axis.set_title(LABELS[metric])
        axis.set_xlabel("world frame")
        axis.grid(alpha=0.3)
    axes.flat[-1].legend(fontsize=7, loc="best")
    figure.suptitle(f"{pipeline}: metrics over time (mean over models and seeds; dotted: training clip end)")
    return _save(figure, path)


def plot_flickering(rows: Sequence[ArmRow], pipeline: str, path: Path) -> Path:
    """VBench temporal flickering per arm beside the truth's own value (higher = steadier; frozen video = 1)."""
    figure = Figure(figsize=(7, 3.5), layout="constrained")
    axis = figure.subplots()
    names = [row.arm for row in rows]
    axis.bar(names, [row.flickering for row in rows], color="tab:blue")
    truth = float(np.nanmean([row.truth_flickering for row in rows]))
    axis.axhline(truth, color="black", linestyle="--", linewidth=1.0, label=f"truth {truth:.4f}")
    values = [row.flickering for row in rows] + [truth]
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = max(high - low, 1e-3) * 0.5
    axis.set_ylim(low - margin, min(1.0, high + margin))
    axis.set_ylabel("temporal flickering")
    axis.set_title(f"{pipeline}: temporal flickering (VBench; rewards frozen video)")
    axis.tick_params(axis="x", rotation=30)
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_strip(frames: Mapping[str, np.ndarray], start_frame: int, title: str, path: Path) -> Path:
    """A row of evenly spaced frames per arm (``frames`` name -> uint8 ``[T, H, W, 3]``), all aligned in time."""
    length = min(video.shape[0] for video in frames.values())
    columns = np.linspace(0, length - 1, num=min(STRIP_COLUMNS, length)).round().astype(int)
    figure = Figure(figsize=(1.3 * len(columns) + 1.2, 1.3 * len(frames) + 0.6), layout="constrained")
    axes = figure.subplots(len(frames), len(columns), squeeze=False)
    for row, (name, video) in enumerate(frames.items()):
        for column, index in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(video[index], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {start_frame + index}", fontsize=7)
            if column == 0:
                axis.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself as the figure's canvas
    figure.savefig(path, dpi=DPI)
    return path
