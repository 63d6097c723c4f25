"""What every plugin (cache policy, session hook) shares: typed parameters, the session it serves.

It sits below both plugin APIs so that neither imports the other; ``tokentrim_server.policies`` and
``tokentrim_server.hooks`` re-export these names, which is where plugins import them from.

A plugin declares its parameters as :class:`Parameter` entries; :func:`validate_params` turns the values a
session asks for into a complete, checked dict. The checks are pydantic's, in strict mode (a bool is not an
int, an int is not a bool, NaN and infinity are no float), and the same declaration gives each parameter's
standard JSON Schema. Every error names the parameter and what it accepts, so a client can fix its request
without reading the plugin's code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError


@dataclass(frozen=True)
class SessionInfo:
    """What a plugin may know about the session it serves."""

    pipeline: str  # "self_forcing", "rolling_forcing" or "longlive"
    seed: int | None  # the session's noise seed (None when the noise is replayed)
    batch: int
    frames_per_block: int
    tokens_per_frame: int
    sink_frames: int
    latent_shape: tuple[int, int, int]  # [C, H, W]
    patch_size: tuple[int, int, int]
    prompt: str = ""  # the prompt the session opened with ("" where none was given, e.g. replayed embeddings)
    model: str = ""  # the served model: its folder as the server was given it, or "tiny" ("" where unknown)


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
# pydantic error types that mean "not of the declared type" (the rest are range or choice errors)
_TYPE_ERRORS = {"bool_type", "int_type", "float_type", "string_type", "finite_number"}


class ParameterError(ValueError):
    """A plugin parameter that is unknown, of the wrong type or out of its range."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of a plugin: ``type`` is one of bool, int, float, str.

    Numeric bounds are inclusive unless marked exclusive; ``None`` means unbounded. ``choices`` restricts a
    str parameter to a fixed set.
    """

    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"parameter {self.name!r}: type must be one of bool, int, float, str; got {self.type}")
        # A schema whose default fails its own check is a bug in the plugin, not in a request.
        self.validate(self.default)

    @property
    def allowed(self) -> str:
        """Human-readable range, e.g. ``(0, 1)``, ``[0, inf)``, ``one of first_step, final``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.type not in (int, float):
            return f"any {_TYPE_NAMES[self.type]}"
        low = "-inf" if self.minimum is None else _number(self.minimum)
        high = "inf" if self.maximum is None else _number(self.maximum)
        left = "(" if self.minimum is None or self.exclusive_minimum else "["
        right = ")" if self.maximum is None or self.exclusive_maximum else "]"
        return f"{left}{low}, {high}{right}"

    def validate(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise :class:`ParameterError`."""
        try:
            checked = self._adapter.validate_python(value, strict=True)
        except ValidationError as error:
            expected = self._constraint
            if error.errors()[0]["type"] in _TYPE_ERRORS:
                kind = {bool: "a bool", int: "an int", float: "a finite float", str: "a str"}[self.type]
                expected = f"{kind} {expected}"
            raise ParameterError(f"parameter {self.name!r} must be {expected}; got {value!r}") from None
        return float(checked) if self.type is float else checked

    def json_schema(self) -> dict[str, Any]:
        """This parameter's JSON Schema, with its default and description."""
        return {**self._adapter.json_schema(), "default": self.default, "description": self.description}

    def describe(self) -> dict[str, Any]:
        """JSON-ready schema entry."""
        return {
            "name": self.name,
            "type": _TYPE_NAMES[self.type],
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "exclusive_minimum": self.exclusive_minimum,
            "exclusive_maximum": self.exclusive_maximum,
            "choices": list(self.choices) if self.choices is not None else None,
            "allowed": self.allowed,
            "description": self.description,
        }

    @functools.cached_property
    def _adapter(self) -> TypeAdapter:
        """The pydantic validator of this declaration (bounds as declared, strictness at validation)."""
        if self.choices is not None:
            return TypeAdapter(Literal[self.choices])
        bounds: dict[str, float] = {}
        if self.minimum is not None:
            bounds["gt" if self.exclusive_minimum else "ge"] = self.minimum
        if self.maximum is not None:
            bounds["lt" if self.exclusive_maximum else "le"] = self.maximum
        finite = {"allow_inf_nan": False} if self.type is float else {}
        return TypeAdapter(Annotated[self.type, Field(**bounds, **finite)])

    @property
    def _constraint(self) -> str:
        return self.allowed if self.choices is not None else f"in {self.allowed}"


def validate_params(
    schema: Sequence[Parameter], values: Mapping[str, Any] | None, owner: str = "policy"
) -> dict[str, Any]:
    """Check ``values`` against ``schema``; returns every parameter, defaults filled in."""
    values = dict(values or {})
    known = {parameter.name: parameter for parameter in schema}
    unknown = sorted(set(values) - set(known))
    if unknown:
        accepted = ", ".join(known) or "none"
        raise ParameterError(f"{owner} has no parameter {', '.join(map(repr, unknown))}; it accepts: {accepted}")
    return {name: parameter.validate(values.get(name, parameter.default)) for name, parameter in known.items()}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Configurable:
    """What every plugin shares: a name, a description, and typed parameters validated at construction.

    ``kind`` names the plugin family in error messages ("cache policy 'tokentrim' has no parameter ...").
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[tuple[Parameter, ...]] = ()

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = validate_params(self.parameters, params, owner=f"{self.kind} {self.name!r}")

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """JSON-ready description a server lists: the parameter entries, and the same as a JSON Schema."""
        return {
            "name": cls.name,
            "description": cls.description,
            "parameters": [parameter.describe() for parameter in cls.parameters],
            "json_schema": cls.json_schema(),
        }

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The parameters as one JSON Schema object (draft 2020-12): what a client may put in ``params``."""
        return {
            "type": "object",
            "title": f"{cls.kind} {cls.name}",
            "description": cls.description,
            "properties": {parameter.name: parameter.json_schema() for parameter in cls.parameters},
            "additionalProperties": False,
        }
