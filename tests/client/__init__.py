"""Client tests. A package so that its conftest is not imported as the bare module `conftest`, which the root
tests import by name (from conftest import ...)."""
