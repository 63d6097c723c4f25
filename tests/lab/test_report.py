"""The drift report: its arithmetic on synthetic rollout summaries, and the command end to end (smoke setting)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from drift_lab.analysis import arm_row, arm_rows, conclusions, describe_interval
from drift_lab.arms import arm_names
from drift_lab.experiment import METRICS, ExperimentConfig, RolloutSummary, run_experiment, shards
from drift_lab.report import TRAINING_GUIDE, _motion, main
from drift_lab.statistics import Interval
from lab.lab_support import random_lab_folder


def summary(arm: str, seed: int, value: float, *, triggered=(False, False, False, False), seconds=1.0,
            equals_control=None) -> RolloutSummary:  # fmt: skip
    """A synthetic 4-chunk rollout whose every metric is ``value`` in every chunk."""
    return RolloutSummary(
        model="m",
        pipeline="self_forcing",
        arm=arm,
        seed=seed,
        chunk_indices=[1, 2, 3, 4],
        chunk_start_frames=[9, 21, 33, 45],
        chunk_metrics={name: [value] * 4 for name in METRICS},
        late={name: value for name in METRICS},
        flickering=0.99,
        truth_flickering=0.995,
        triggered=list(triggered),
        regenerations=[int(flag) for flag in triggered],
        tokens_removed=[3 * int(flag) for flag in triggered],
        chunk_seconds=[seconds / 4] * 4,
        equals_control=equals_control,
    )


def test_trigger_rate_regenerations_and_wall_time_ratio():
    control = [summary("none", seed, 1.0) for seed in range(2)]
    arm = [summary("tokentrim", 0, 1.0, triggered=(True, False, False, False), seconds=1.5),
           summary("tokentrim", 1, 1.0, triggered=(True, True, False, False), seconds=2.5)]  # fmt: skip
    row = arm_row("self_forcing", "tokentrim", arm, control)
    assert row.trigger_percent == 100 * 3 / 8
    assert row.regenerations_per_chunk == 3 / 8 and row.tokens_removed_per_chunk == 9 / 8
    assert row.wall_ratio == (1.5 + 2.5) / (1.0 + 1.0)
    assert row.equals_control is None


def test_rows_and_conclusions_follow_the_numbers():
    """PSNR-like metrics higher for tokentrim on every seed: the conclusion must say better, with the rate."""
    control = [summary("none", seed, 10.0) for seed in range(16)]
    tokentrim = [summary("tokentrim", seed, 10.5 + 0.01 * seed, triggered=(True, False, False, False))
                 for seed in range(16)]  # fmt: skip
    regenerate = [summary("regenerate", seed, 10.0, triggered=(True, False, False, False), equals_control=True)
                  for seed in range(16)]  # fmt: skip
    rows = arm_rows(control + tokentrim + regenerate, "self_forcing")
    assert [row.arm for row in rows] == ["none", "tokentrim", "regenerate"]
    psnr = rows[1].versus_control["psnr"]
    assert psnr.excludes_zero and psnr.low > 0.4
    lines = conclusions(control + tokentrim + regenerate, "self_forcing")
    assert lines[0].startswith("`tokentrim` triggered on 25.0% of generated chunks (16 rollouts)")
    versus_none = next(line for line in lines if "vs `none`" in line)
    assert "PSNR (dB): better" in versus_none and "object survival: better" in versus_none
    assert "object-count error: worse" in versus_none  # higher count error is worse
    assert any("`regenerate` equals `none` exactly" in line for line in lines)


def test_conclusions_flag_a_policy_that_barely_acted():
    control = [summary("none", seed, 1.0) for seed in range(6)]
    tokentrim = [summary("tokentrim", seed, 1.0) for seed in range(6)]
    lines = conclusions(control + tokentrim, "self_forcing")
    assert "triggered on 0.0%" in lines[0] and "barely acted" in lines[1]
    assert "no metric differs detectably" in lines[2]


def test_conclusions_claim_nothing_from_too_few_pairs():
    control = [summary("none", seed, 1.0) for seed in range(2)]
    tokentrim = [summary("tokentrim", seed, 2.0, triggered=(True, True, True, True)) for seed in range(2)]
    assert "too few pairs (2 < 5) to claim any difference" in conclusions(control + tokentrim, "self_forcing")[1]


def test_interval_wording():
    assert "no detectable difference" in describe_interval("psnr", Interval(0.1, -0.2, 0.4, 8))
    assert "worse" in describe_interval("psnr", Interval(-1.0, -1.5, -0.5, 8))
    assert "better" in describe_interval("colour_error", Interval(-1.0, -1.5, -0.5, 8))
    assert "too few pairs (0 < 5)" in describe_interval("psnr", Interval(math.nan, math.nan, math.nan, 0))
    assert "too few pairs (1 < 5)" in describe_interval("psnr", Interval(1.0, 1.0, 1.0, 1))


def test_config_refuses_unknown_arms_and_pipelines():
    with pytest.raises(ValueError, match="exist on none of the pipelines"):
        ExperimentConfig(models=("m",), pipelines=("rolling_forcing",), arms=("tokentrim",))
    with pytest.raises(ValueError, match="pipeline must be one of"):
        ExperimentConfig(models=("m",), pipelines=("causvid",))
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        ExperimentConfig(models=("m",), seeds=0)
    config = ExperimentConfig(models=("m",), arms=("tokentrim", "random_final"))
    assert [arm.name for arm in config.arms_for("self_forcing")] == ["none", "tokentrim"]
    assert [arm.name for arm in config.arms_for("rolling_forcing")] == ["none", "random_final"]
    assert [arm.name for arm in ExperimentConfig(models=("m",)).arms_for("self_forcing")] == arm_names("self_forcing")


@pytest.mark.slow
def test_report_command_end_to_end_on_the_smoke_setting(tmp_path, capsys):
    folder = random_lab_folder(tmp_path)
    out = tmp_path / "docs" / "drift-lab.md"
    out.parent.mkdir()
    assert main(["--models", str(folder), "--smoke", "--out", str(out)]) == 0
    progress = capsys.readouterr().err
    assert "[1/6] model 1/1 seed 1/2 self_forcing/none" in progress and "[6/6]" in progress
    markdown = out.read_text()
    arms = ("none", "tokentrim", "regenerate")
    for arm in arms:
        assert f"| `{arm}` | 2 |" in markdown  # its row in the late-horizon table
    assert "## What the result is" in markdown and "## Limits" in markdown and "Smoke run" in markdown
    assert "`regenerate` equals `none` exactly in every rollout" in markdown
    assert "too few pairs (2 < 5)" in markdown  # two seeds support no claim
    for name in ("over-time", "flickering", "strip"):
        figure = out.parent / "drift-lab" / f"self_forcing-{name}.png"
        assert figure.read_bytes().startswith(b"\x89PNG")
        assert f"(drift-lab/self_forcing-{name}.png)" in markdown
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["smoke"] is True and raw["models"]["untrained"]["training"]["preset"] == "micro"
    assert {(r["arm"], r["seed"]) for r in raw["rollouts"]} == {
        (arm, seed) for arm in arms for seed in (1_000_000, 1_000_001)
    }
    # 2x a 3-chunk clip from one prefilled chunk: chunks 1..5, the late horizon from chunk 3.
    assert all(r["chunk_indices"] == [1, 2, 3, 4, 5] for r in raw["rollouts"])
    assert all(r["equals_control"] is True for r in raw["rollouts"] if r["arm"] == "regenerate")


def test_the_committed_report_carries_the_cpu_training_guide_verbatim():
    """The one hand-written section is copied into the report, so regenerating the report keeps it; the
    committed report must hold its current text."""
    guide = TRAINING_GUIDE.read_text()
    assert guide.startswith("## Training on the CPU\n")
    assert guide in (Path(__file__).resolve().parents[2] / "docs" / "drift-lab.md").read_text()


@pytest.mark.slow
def test_jobs_split_the_grid_without_changing_a_rollout(tmp_path):
    folders = (str(random_lab_folder(tmp_path, "first")), str(random_lab_folder(tmp_path, "second", seed=1)))
    assert [(s.model_number, list(s.seeds)) for s in shards(ExperimentConfig(models=folders, seeds=3), 2)] == [
        (0, [0, 1]), (0, [2]), (1, [0, 1]), (1, [2])
    ]  # fmt: skip
    config = ExperimentConfig(models=folders[:1], seeds=2, horizon_multiple=2, pipelines=("self_forcing",),
                              arms=("tokentrim",))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each job runs: float reductions are split by thread
    try:
        alone = run_experiment(config)
    finally:
        torch.set_num_threads(threads)
    split = run_experiment(config, jobs=2, threads=1)

    def without_wall_time(result):  # as JSON text: NaN (no object found) then equals NaN
        return json.dumps([{**asdict(s), "chunk_seconds": None} for s in result.summaries])

    assert without_wall_time(split) == without_wall_time(alone) and len(alone.summaries) == 4
    assert split.models == alone.models and split.example == alone.example
    assert split.examples.keys() == alone.examples.keys()
    with pytest.raises(ValueError, match="'first' appears twice"):
        ExperimentConfig(models=(folders[0], folders[0] + "/"))


def test_the_world_paragraph_says_how_each_models_objects_move():
    assert _motion({"old": {}, "free": {"world": {"lanes": False}}}) == (
        "Objects move in any direction and pass over one another."
    )
    assert _motion({"a": {"world": {"lanes": True}}}).startswith("The objects move sideways in rows")
    mixed = _motion({"a": {"world": {"lanes": True}}, "b": {"world": {}}})
    assert mixed.startswith("In the worlds of a, objects move sideways") and "in the others" in mixed
