"""The quality gate: its arithmetic on known metrics, and the command on an untrained lab model."""

from __future__ import annotations

import json
import math

import pytest

from drift_lab.gate import (
    CHECKS,
    OBJECT_CHECKS,
    format_table,
    free_rollout_values,
    main,
    no_motion_metrics,
    reconstruct,
    verdict,
)
from drift_lab.measure import LOSS_CAUSES, measure
from drift_lab.model import PRESETS, build_lab_components
from drift_lab.rollout import chunk_first_frame
from drift_lab.world import WorldSpec, render, sample_scene
from lab.lab_support import random_lab_folder

PASSING = {"count_error": 0.0, "colour_error": 0.02, "survival": 1.0, "teacher_forced_psnr": 31.0}


def test_the_truth_itself_passes_the_free_rollout_checks():
    scene = sample_scene(3, WorldSpec(height=64, width=64))
    values = free_rollout_values([measure(render(scene, 9, 24), scene, 9)])
    assert values["count_error"] == 0.0 and values["survival"] == 1.0 and values["colour_error"] < 0.01
    assert verdict({**values, "teacher_forced_psnr": 99.0})["pass"]


@pytest.mark.parametrize(
    "metric, value",
    [("count_error", 0.1), ("colour_error", 0.2), ("survival", 0.99), ("teacher_forced_psnr", 25.0),
     ("survival", math.nan)],
)  # fmt: skip
def test_each_threshold_is_strict_and_fails_alone(metric, value):
    result = verdict({**PASSING, metric: value})
    assert not result["pass"]
    assert [name for name, entry in result["checks"].items() if not entry["pass"]] == [metric]


def test_verdict_reports_each_metric_with_threshold_and_rule():
    result = verdict(PASSING)
    assert result["pass"]
    assert {name: (entry["threshold"], entry["rule"]) for name, entry in result["checks"].items()} == {
        "count_error": (0.1, "<"),
        "colour_error": (0.1, "<"),
        "survival": (0.99, ">"),
        "teacher_forced_psnr": (25.0, ">"),
    }
    assert len(CHECKS) == 4
    with pytest.raises(ValueError, match="teacher_forced_psnr"):
        verdict({name: value for name, value in PASSING.items() if name != "teacher_forced_psnr"})


def test_gate_command_fails_an_untrained_model(tmp_path, capsys):
    folder = random_lab_folder(tmp_path)
    assert main([str(folder), "--seeds", "1", "--json", "--record"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["pass"] is False and result["seeds"] == 1
    assert set(result["checks"]) == {check.metric for check in CHECKS}
    assert result["checks"]["teacher_forced_psnr"]["value"] < 25.0
    # --record keeps the result in training.json and shows it on the model card.
    assert json.loads((folder / "training.json").read_text())["gate"] == result
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Quality gate: FAIL (1 held-out scenes)" in card and "teacher_forced_psnr" in card
    assert 0.0 <= result["no_motion"]["survival"] <= 1.0 and "no-motion reference" in card
    # Every lost (object, frame) pair is attributed to one cause.
    lost = result["lost_objects"]
    assert set(lost) == set(LOSS_CAUSES)
    pairs, gone = (sum(counts[name] for counts in lost.values()) for name in ("pairs", "lost"))
    assert 0 < gone <= pairs and result["checks"]["survival"]["value"] < 1.0
    assert "lost (object, frame) pairs of the free rollouts" in card


def test_the_no_motion_reference_loses_objects_as_they_move_away():
    world = WorldSpec(height=64, width=64)
    scenes = [sample_scene(seed, world) for seed in range(1_000_000, 1_000_008)]
    references = [no_motion_metrics(scene, 9, 33) for scene in scenes]
    # One frame later nothing has moved more than 1.5 px: every object is still found where it is.
    assert all(reference.survival[0] == 1.0 and reference.count_error[0] == 0 for reference in references)
    # 24 frames later some have moved further than the survival radius.
    assert free_rollout_values(references)["survival"] < 0.95
    table = format_table({**verdict(PASSING), "gate": "quality", "model": "m", "seeds": 8, "clip_chunks": 3,
                          "no_motion": free_rollout_values(references)})  # fmt: skip
    assert "no-motion reference, the last true frame repeated: survival" in table
    assert "unfinished" not in table
    snapshot = format_table({**verdict(PASSING), "gate": "quality", "model": "snapshot", "seeds": 8, "clip_chunks": 3,
                             "finished": False, "steps_done": 4000, "steps": 20000})  # fmt: skip
    assert "unfinished model: step 4000 of 20000" in snapshot


def test_autoencoder_gate_command_runs_end_to_end(tmp_path, capsys):
    """``--vae-only`` on a micro folder: every object check is reported with its threshold and verdict (an
    untrained autoencoder fails; what is tested is the plumbing, not a pass)."""
    folder = random_lab_folder(tmp_path)
    assert main([str(folder), "--vae-only", "--seeds", "2", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["gate"] == "autoencoder" and result["seeds"] == 2 and result["pass"] is False
    assert list(result["checks"]) == [check.metric for check in OBJECT_CHECKS] == ["count_error", "colour_error",
                                                                                  "survival"]  # fmt: skip
    assert main([str(folder), "--vae-only", "--seeds", "1"]) == 1
    table = capsys.readouterr().out
    assert table.startswith("autoencoder gate of untrained (1 seeds, clip of 3 chunks)")
    assert "survival" in table and "> 0.99" in table and table.rstrip().endswith("FAIL")


def test_reconstruction_of_an_autoencoder_is_the_whole_clip():
    """The gate measures every frame of the clip: encoding then streaming decoding keeps the frame count."""
    preset = PRESETS["micro"]
    vae = build_lab_components(preset, 0).vae
    frames = render(sample_scene(1, preset.world), 0, chunk_first_frame(3))
    assert reconstruct(vae, frames).shape == frames.shape
