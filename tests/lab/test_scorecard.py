"""The scorecard command end to end on the micro model, its parameter parsing, and the adaptive budget."""

from __future__ import annotations

import json

import pytest
import torch

from drift_lab.adaptive import AdaptiveBudgetPolicy, outlier_positions
from drift_lab.scorecard import PolicyUnderTest, main, parse_params, versus_tokentrim_lines
from drift_lab.statistics import Interval


def test_parameters_are_read_as_json_when_they_parse():
    assert parse_params(["prune_ratio=0.2", "candidate=final", "warmup=3"]) == {
        "prune_ratio": 0.2, "candidate": "final", "warmup": 3
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["prune_ratio"])


def test_a_first_step_policy_is_switched_to_final_candidates_on_rolling_forcing():
    assert PolicyUnderTest("tokentrim", {}).on_pipeline("self_forcing") == {}
    assert PolicyUnderTest("tokentrim", {}).on_pipeline("rolling_forcing") == {"candidate": "final"}
    assert PolicyUnderTest("tokentrim_adaptive", {"z": 2}).label == "tokentrim_adaptive(z=2)"


def test_outliers_of_the_chunks_drift_are_pruned_within_bounds():
    drift = torch.tensor([1.0, 1.1, 0.9, 1.0, 9.0, 1.05, 8.0, 0.95])
    assert outlier_positions(drift, z=3.0, max_ratio=0.5).tolist() == [4, 6]
    assert outlier_positions(drift, z=3.0, max_ratio=0.1).tolist() == [4]  # at most ceil(0.1 * 8) = 1
    assert outlier_positions(torch.ones(8), z=3.0, max_ratio=0.5).tolist() == [0]  # at least the top one
    with pytest.raises(ValueError, match="max_ratio"):
        AdaptiveBudgetPolicy({"max_ratio": 1.5})


def test_the_scorecard_runs_end_to_end_on_the_micro_model(tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main(["tokentrim_adaptive", "--param", "z=2", "--micro", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tokentrim_adaptive(z=2) |" in printed and "| injected_oracle |" in printed
    assert out.read_text().startswith("# Scorecard: `tokentrim_adaptive(z=2)`")
    # Beside TokenTrim, column by column (two seeds: nothing can differ detectably).
    assert "## `tokentrim_adaptive(z=2)` minus `tokentrim`" in printed
    assert "| cache_patch: later divergence | emitted_patch: later divergence |" in printed
    assert "| self_forcing: late survival | self_forcing: late PSNR (dB) |" in printed
    assert "`tokentrim_adaptive(z=2)` against `tokentrim`: no column differs detectably." in printed
    payload = json.loads(out.with_suffix(".json").read_text())
    assert {r["arm"] for r in payload["injection"]["rollouts"]} >= {"none", "tokentrim", "tokentrim_adaptive(z=2)"}


def test_an_unknown_policy_is_refused_by_name():
    with pytest.raises(SystemExit, match="no_such_policy"):
        main(["no_such_policy", "--micro"])


def test_the_verdict_against_tokentrim_reads_each_column_the_right_way_round():
    policy = PolicyUnderTest("tokentrim_adaptive", {})
    lower, higher, unclear = Interval(-0.5, -0.8, -0.2, 32), Interval(0.3, 0.1, 0.5, 32), Interval(0.1, -0.1, 0.3, 32)
    columns = {
        "cache_patch: later divergence": lower,  # less divergence: better
        "clean: later divergence": higher,  # more: worse
        "self_forcing: late survival": higher,  # more survival: better
        "self_forcing: late PSNR (dB)": lower,  # less PSNR: worse
        "rolling_forcing: late survival": unclear,
    }
    lines = versus_tokentrim_lines(policy, columns)
    assert lines[-1] == (
        "`tokentrim_adaptive` against `tokentrim`: better on cache_patch: later divergence, self_forcing: late "
        "survival; worse on clean: later divergence, self_forcing: late PSNR (dB)."
    )
    assert lines[4].count("*") == 4  # every interval but the unclear one is starred
    undecided = versus_tokentrim_lines(policy, {"x: later divergence": unclear})
    assert undecided[-1].endswith("no column differs detectably.")
    assert versus_tokentrim_lines(policy, {}) == []
