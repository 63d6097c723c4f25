"""``tokentrim.json`` in a model folder: settings a diffusers config has no field for.

Today that is ``text_len``, the prompt length the transformer zero-pads to (512 for Wan 2.1; the
diffusers pipeline passes it as an argument instead of storing it).
"""

from __future__ import annotations

import json
from pathlib import Path

SETTINGS_FILE = "tokentrim.json"
DEFAULT_TEXT_LEN = 512


def write_settings(root: Path, text_len: int) -> None:
    (root / SETTINGS_FILE).write_text(json.dumps({"text_len": text_len}, indent=2) + "\n")


def read_text_len(root: Path) -> int:
    """``text_len`` from ``tokentrim.json``, else an original ``config.json``, else Wan's 512."""
    for name in (SETTINGS_FILE, "config.json"):
        path = root / name
        if path.is_file():
            return int(json.loads(path.read_text()).get("text_len", DEFAULT_TEXT_LEN))
    return DEFAULT_TEXT_LEN
