"""Shared fixtures: reference cases and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def parity_case_folders() -> list[Path]:
    """Every case under ../shared/reference (at any depth: LongLive's are under longlive/) plus those listed in
    TOKENTRIM_PARITY_CASES (os.pathsep)."""
    folders = sorted(case.parent for case in REFERENCE_ROOT.rglob("case.json"))
    extra = os.environ.get("TOKENTRIM_PARITY_CASES", "")
    folders += [Path(p) for p in extra.split(os.pathsep) if p.strip()]
    return folders


def parity_params() -> list:
    folders = parity_case_folders()
    if not folders:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no reference cases under {REFERENCE_ROOT}"))]
    return [pytest.param(folder, id=folder.name) for folder in folders]


@pytest.fixture(scope="session")
def tiny_bundle():
    """The embedded tiny model, loaded once for every server test."""
    from tokentrim_server.loading.model import ModelSpec, load_model

    return load_model(ModelSpec(model="tiny"))
