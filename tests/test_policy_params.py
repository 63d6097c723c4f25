"""Policy parameters, schemas and discovery through the entry-point group."""

from __future__ import annotations

import json

import pytest

from tokentrim_server.policies import (
    CachePolicy,
    Parameter,
    ParameterError,
    PolicyNotFoundError,
    create_policy,
    describe_policies,
    load_policy,
    policy_names,
    validate_params,
)
from tokentrim_server.policies.none import NonePolicy

SCHEMA = (
    Parameter("ratio", float, 0.5, "a fraction", minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Parameter("count", int, 2, "a count", minimum=0, maximum=8),
    Parameter("mode", str, "a", "a mode", choices=("a", "b")),
    Parameter("flag", bool, False, "a switch"),
)


def test_defaults_are_filled_in_and_ints_widen_to_float() -> None:
    assert validate_params(SCHEMA, {"ratio": 1}) == {"ratio": 1.0, "count": 2, "mode": "a", "flag": False}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ratio": 0.0}, r"parameter 'ratio' must be in \(0, 1\]; got 0.0"),
        ({"ratio": float("nan")}, r"'ratio' must be a finite float in \(0, 1\]"),
        ({"ratio": "0.5"}, r"'ratio' must be a finite float"),
        ({"count": 9}, r"parameter 'count' must be in \[0, 8\]; got 9"),
        ({"count": 1.0}, r"'count' must be an int in \[0, 8\]"),
        ({"count": True}, r"'count' must be an int"),
        ({"mode": "c"}, r"parameter 'mode' must be one of a, b; got 'c'"),
        ({"flag": 1}, r"'flag' must be a bool"),
        ({"colour": 1}, r"no parameter 'colour'; it accepts: ratio, count, mode, flag"),
    ],
)
def test_bad_values_name_the_parameter_and_its_range(values: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        validate_params(SCHEMA, values)


def test_a_default_outside_its_own_range_is_a_bug() -> None:
    with pytest.raises(ParameterError, match="'bad'"):
        Parameter("bad", int, -1, "negative default", minimum=0)


def test_schema_is_json_ready() -> None:
    class Demo(CachePolicy):
        name = "demo"
        description = "demo policy"
        parameters = SCHEMA

    schema = json.loads(json.dumps(Demo.schema()))
    assert schema["name"] == "demo"
    ratio = schema["parameters"][0]
    assert ratio == {
        "name": "ratio",
        "type": "float",
        "default": 0.5,
        "minimum": 0.0,
        "maximum": 1.0,
        "exclusive_minimum": True,
        "exclusive_maximum": False,
        "choices": None,
        "allowed": "(0, 1]",
        "description": "a fraction",
    }
    with pytest.raises(ParameterError, match="cache policy 'demo' has no parameter 'x'"):
        Demo({"x": 1})


def test_none_is_registered_through_the_entry_point_group() -> None:
    assert "none" in policy_names()
    assert load_policy("none") is NonePolicy
    policy = create_policy("none")
    assert policy.stage is None and policy.max_regenerations == 0
    with pytest.raises(ParameterError, match="accepts: none"):
        create_policy("none", {"prune_ratio": 0.1})
    json.dumps(describe_policies())


def test_unknown_policy_lists_the_installed_ones() -> None:
    with pytest.raises(PolicyNotFoundError, match=r"no cache policy 'nope'; installed: .*none"):
        load_policy("nope")


def test_tokentrim_and_random_schemas() -> None:
    pytest.importorskip("tokentrim_plugin", reason="install plugins/tokentrim (make install)")
    for name in ("tokentrim", "random"):
        policy = create_policy(name)
        assert policy.params == {
            "prune_ratio": 0.1,
            "sensitivity": 2.0,
            "warmup": 2,
            "max_regenerations": 1,
            "candidate": "first_step",
        }
    with pytest.raises(ParameterError, match=r"'prune_ratio' must be in \(0, 1\); got 1.5"):
        create_policy("tokentrim", {"prune_ratio": 1.5})
    with pytest.raises(ParameterError, match=r"'candidate' must be one of first_step, final"):
        create_policy("random", {"candidate": "middle"})
    # One instance per session: state is never shared.
    first, second = create_policy("tokentrim"), create_policy("tokentrim")
    first.detector.accept(1.0)
    assert second.detector.count == 0
