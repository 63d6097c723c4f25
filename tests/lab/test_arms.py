"""The lab's arms: the table, the lab-only control policies, and the oracle."""

from __future__ import annotations

import pytest
import torch
from policy_support import LATENT_SHAPE, rolling_stream, self_forcing_stream, tiny_model

from drift_lab.arms import (
    ARMS,
    CONTROL,
    AlwaysTrimPolicy,
    OraclePolicy,
    RegeneratePolicy,
    arm_names,
    get_arm,
)
from tokentrim_server.engine import open_runner
from tokentrim_server.policies import AcceptedChunk, Candidate, SessionInfo, latent_summary

PATCH = (1, 2, 2)
# Triggers as soon as one severity is known and any later chunk drifts more than the mean.
EAGER = {"sensitivity": 0.0, "warmup": 1}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def session(pipeline: str = "self_forcing") -> SessionInfo:
    _, height, width = LATENT_SHAPE
    return SessionInfo(pipeline, 3, 1, 3, (height // 2) * (width // 2), 0, LATENT_SHAPE, PATCH)


def test_arm_table_matches_the_brief():
    assert arm_names("self_forcing") == [
        "none", "tokentrim", "tokentrim_final", "random", "regenerate", "always_trim", "oracle",
        "tokentrim_p05", "tokentrim_p10", "tokentrim_p20", "flowmo", "flowmo_x0",
        "tokentrim_flowmo", "true_cache",
    ]  # fmt: skip
    assert arm_names("rolling_forcing") == [
        "none", "tokentrim_final", "random_final", "regenerate_final", "always_trim_final", "oracle_final",
        "flowmo", "flowmo_x0", "tokentrim_final_flowmo", "true_cache",
    ]  # fmt: skip
    assert len({arm.key for arm in ARMS}) == len(ARMS)
    assert get_arm("self_forcing", "tokentrim_p10").same_as == "tokentrim"
    with pytest.raises(ValueError, match="arm must be one of none, tokentrim_final"):
        get_arm("rolling_forcing", "tokentrim")
    with pytest.raises(ValueError, match="pipeline must be one of"):
        arm_names("causvid")


@pytest.mark.parametrize("arm", ARMS, ids=lambda arm: arm.key)
def test_every_arm_builds_a_fresh_policy_for_its_pipeline(arm):
    truth = torch.zeros(1, 9, *LATENT_SHAPE)
    first, second = arm.create_policy(truth), arm.create_policy(truth)
    assert first is not second
    if first.name == CONTROL:  # the control, FlowMo alone and the counterfactual (the control's policy)
        assert first.stage is None
    elif arm.pipeline == "rolling_forcing" or arm.name.endswith("_final"):
        assert first.stage == "final"
    else:
        assert first.stage == "first_step"
    if arm.needs_truth:
        with pytest.raises(ValueError, match="needs the truth"):
            arm.create_policy(None)


@pytest.mark.parametrize(
    ("pipeline", "name", "policy"),
    [("self_forcing", "flowmo", "none"), ("self_forcing", "tokentrim_flowmo", "tokentrim"),
     ("rolling_forcing", "flowmo", "none"), ("rolling_forcing", "tokentrim_final_flowmo", "tokentrim"),
     ("self_forcing", "flowmo_x0", "none"), ("rolling_forcing", "flowmo_x0", "none")],
)  # fmt: skip
def test_flowmo_arms_add_fresh_flowmo_hooks_to_their_policy(pipeline, name, policy):
    pytest.importorskip("flowmo_plugin", reason="install plugins/flowmo (make install)")
    arm = get_arm(pipeline, name)
    first, second = arm.create_hooks(), arm.create_hooks()
    assert [hook.name for hook in first] == ["flowmo"] and first[0] is not second[0]
    changed = {key: value for key, value in first[0].params.items() if value != type(first[0])().params[key]}
    # FlowMo's defaults, as the paper runs it; flowmo_x0: every step, on x0, lr 1e-2
    assert changed == ({"threshold": 0.0, "prediction": "x0", "lr": 0.01} if name == "flowmo_x0" else {})
    assert arm.create_policy().name == policy
    assert all(arm.create_hooks() == [] for arm in ARMS if "flowmo" not in arm.name)


def test_ablation_arms_prune_their_ratio():
    ratios = {name: get_arm("self_forcing", name).create_policy().params["prune_ratio"]
              for name in ("tokentrim_p05", "tokentrim_p10", "tokentrim_p20", "tokentrim")}  # fmt: skip
    assert ratios == {"tokentrim_p05": 0.05, "tokentrim_p10": 0.1, "tokentrim_p20": 0.2, "tokentrim": 0.1}


def run(stream, policy) -> tuple[list[torch.Tensor], list]:
    with open_runner(stream, policy) as runner:
        results = list(runner)
    return [result.chunk.latents for result in results], [result.report for result in results]


@pytest.mark.parametrize(
    "make, params",
    [(lambda model: self_forcing_stream(model, 4), {}),
     (lambda model: rolling_stream(model, 3), {"candidate": "final"})],
    ids=["self_forcing", "rolling_forcing"],
)  # fmt: skip
def test_regenerate_equals_none_exactly_and_regenerates(model, make, params):
    plain, _ = run(make(model), get_arm("self_forcing", CONTROL).create_policy())
    latents, reports = run(make(model), RegeneratePolicy({**EAGER, **params}))
    assert any(report.regenerations for report in reports)  # it did regenerate...
    assert all(report.tokens_removed == 0 for report in reports)  # ...without pruning
    for expected, actual in zip(plain, latents, strict=True):
        assert torch.equal(expected, actual)


def test_always_trim_prunes_every_chunk_after_the_first(model):
    _, reports = run(self_forcing_stream(model, 3), AlwaysTrimPolicy({"prune_ratio": 0.25}))
    assert [report.triggered for report in reports] == [False, True, True]
    assert [report.regenerations for report in reports] == [0, 1, 1]
    # ceil(0.25 * 24) = 6 positions from each of the 3 cached frames; later chunks may hit pruned positions.
    assert reports[1].tokens_removed == 18 and reports[2].tokens_removed > 0


def candidate(chunk: int, latents: torch.Tensor, attempt: int = 0) -> Candidate:
    summary = latent_summary(latents, PATCH)
    return Candidate(chunk, 3 * chunk, "first_step", attempt, latents, summary, None)


def accept(policy, chunk: Candidate, decision) -> None:
    policy.accepted(AcceptedChunk(chunk.chunk, chunk.frame_start, chunk.latents, chunk.summary, decision, 0))


def test_oracle_triggers_on_a_chunk_far_from_the_truth_and_not_on_the_truth():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(1, 12, *LATENT_SHAPE, generator=generator)
    oracle = OraclePolicy(truth, {"prune_ratio": 0.25})
    oracle.start(session())
    # Two accepted chunks a little off the truth: the warm-up, and the statistics the threshold comes from.
    for chunk, scale in ((0, 0.10), (1, 0.12)):
        near = candidate(chunk, truth[:, 3 * chunk : 3 * chunk + 3] + scale * torch.randn(1, 3, *LATENT_SHAPE))
        decision = oracle.inspect(near, cache=None)
        assert not decision.triggered and decision.threshold is None
        accept(oracle, near, decision)
    exact = oracle.inspect(candidate(2, truth[:, 6:9].clone()), cache=None)
    assert not exact.triggered and exact.severity == 0.0
    # Far from the truth at six token positions only (rows 0..1, columns 0..2 of the 4x6 patch grid).
    far_latents = truth[:, 6:9].clone()
    far_latents[..., :4, :6] += 5.0
    far = oracle.inspect(candidate(2, far_latents), cache=None)
    assert far.triggered and far.severity > far.threshold
    assert far.positions.tolist() == [0, 1, 2, 6, 7, 8]
    # Judged against the true chunk, not the previous one: an exact copy of the previous chunk is far.
    copy = oracle.inspect(candidate(2, truth[:, 3:6].clone()), cache=None)
    assert copy.severity > 0


def test_oracle_refuses_truth_that_does_not_cover_the_chunk():
    oracle = OraclePolicy(torch.zeros(1, 6, *LATENT_SHAPE))
    oracle.start(session())
    with pytest.raises(ValueError, match="truth holds 6 latent frames; chunk 2 needs 9"):
        oracle.inspect(candidate(2, torch.zeros(1, 3, *LATENT_SHAPE)), cache=None)
    with pytest.raises(ValueError, match="truth must be latents"):
        OraclePolicy(torch.zeros(6, *LATENT_SHAPE))
