"""Finding plugins (cache policies, session hooks) by name through installed distributions' entry points.

The core imports no plugin by name, and registers its own built-ins through the same groups, so built-in
and third-party plugins are treated alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

P = TypeVar("P")


class PluginRegistry(Generic[P]):
    """The plugins of one entry-point ``group``, each a subclass of ``base`` built as ``cls(params)``.

    ``kind`` names the plugins in messages ("cache policy"); ``not_found`` is the error raised for an
    unknown or ambiguous name (its message lists what is installed).
    """

    def __init__(self, group: str, base: type[P], kind: str, not_found: type[LookupError]) -> None:
        self.group = group
        self.base = base
        self.kind = kind
        self.not_found = not_found

    def _targets(self) -> dict[str, set[str]]:
        """Entry-point name -> the distinct ``module:attr`` targets registered under it."""
        targets: dict[str, set[str]] = {}
        for entry in entry_points(group=self.group):
            targets.setdefault(entry.name, set()).add(entry.value)
        return targets

    def names(self) -> list[str]:
        """Names of every installed plugin, sorted."""
        return sorted(self._targets())

    def load(self, name: str) -> type[P]:
        """The class registered under ``name``."""
        targets = self._targets().get(name)
        if not targets:
            raise self.not_found(f"no {self.kind} {name!r}; installed: {', '.join(self.names()) or 'none'}")
        # The same target twice is an editable install next to a copy; two different targets are ambiguous.
        if len(targets) > 1:
            raise self.not_found(f"{self.kind} {name!r} is registered more than once: {', '.join(sorted(targets))}")
        entry = next(e for e in entry_points(group=self.group) if e.name == name)
        plugin = entry.load()
        if not (isinstance(plugin, type) and issubclass(plugin, self.base)):
            raise TypeError(f"entry point {name!r} = {entry.value} is not a {self.base.__name__} subclass")
        return plugin

    def create(self, name: str, params: Mapping[str, Any] | None = None) -> P:
        """A fresh, configured instance for one session (``ParameterError`` on bad ``params``)."""
        return self.load(name)(params)  # type: ignore[call-arg]

    def describe(self) -> list[dict[str, Any]]:
        """Every installed plugin's schema, for a server to list."""
        return [self.load(name).schema() for name in self.names()]  # type: ignore[attr-defined]
