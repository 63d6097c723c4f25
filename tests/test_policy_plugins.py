"""A third-party policy, shipped as its own distribution, is found through its entry point and used."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_support import installed_distribution, self_forcing_stream, tiny_model

from tokentrim_server.engine import open_runner
from tokentrim_server.policies import ENTRY_POINT_GROUP, create_policy, load_policy, policy_names

MODULE = "thirdparty_every_other"

POLICY_SOURCE = '''
"""Prunes the even token positions of the context on every odd chunk."""

import torch

from tokentrim_server.policies import CachePolicy, Decision, Parameter


class EveryOtherPolicy(CachePolicy):
    name = "every_other"
    description = "Test policy: prune on odd chunks."
    parameters = (Parameter("stride", int, 2, "Prune every stride-th position.", minimum=1, maximum=24),)
    instances = []

    def __init__(self, params=None):
        super().__init__(params)
        self.inspected = []
        EveryOtherPolicy.instances.append(self)

    @property
    def stage(self):
        return "first_step"

    @property
    def max_regenerations(self):
        return 1

    def inspect(self, candidate, cache):
        self.inspected.append((candidate.chunk, candidate.attempt))
        positions = torch.arange(0, cache.tokens_per_frame, self.params["stride"])
        return Decision(candidate.chunk % 2 == 1 and candidate.attempt == 0, positions)
'''


def test_third_party_policy_is_discovered_and_driven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "every_other" not in policy_names()
    entry = f"every_other = {MODULE}:EveryOtherPolicy"
    with installed_distribution(tmp_path, monkeypatch, MODULE, POLICY_SOURCE, ENTRY_POINT_GROUP, entry):
        assert "every_other" in policy_names()
        policy_class = load_policy("every_other")
        assert policy_class.__module__ == MODULE
        policy = create_policy("every_other", {"stride": 3})
        with pytest.raises(ValueError, match=r"'stride' must be in \[1, 24\]"):
            create_policy("every_other", {"stride": 0})

        runner = open_runner(self_forcing_stream(tiny_model(), 3), policy)
        reports = [result.report for result in runner]
        runner.close()

        assert policy.inspected == [(0, 0), (1, 0), (1, 1), (2, 0)]
        assert [r.triggered for r in reports] == [False, True, False]
        assert reports[1].tokens_removed == 8 * 3  # positions 0, 3, ..., 21 of block 0's 3 frames
