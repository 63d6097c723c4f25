"""``tokentrim.json`` in a model folder: settings a diffusers config has no field for.

* ``text_len``: the prompt length the transformer zero-pads to (512 for Wan 2.1; the diffusers pipeline
  passes it as an argument instead of storing it).
* ``default_size``: ``[height, width]`` of the frames the model was trained at, used when a request names
  no size (Wan 2.1's 480x832 when absent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "tokentrim.json"
DEFAULT_TEXT_LEN = 512
WAN_DEFAULT_SIZE = (480, 832)


@dataclass(frozen=True)
class FolderSettings:
    text_len: int = DEFAULT_TEXT_LEN
    default_size: tuple[int, int] = WAN_DEFAULT_SIZE


def write_settings(root: Path, text_len: int, default_size: tuple[int, int] | None = None) -> None:
    settings: dict[str, object] = {"text_len": text_len}
    if default_size is not None:
        settings["default_size"] = list(default_size)
    (root / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_settings(root: Path) -> FolderSettings:
    """Settings from ``tokentrim.json``, else ``text_len`` from an original ``config.json``, else defaults."""
    for name in (SETTINGS_FILE, "config.json"):
        path = root / name
        if path.is_file():
            raw = json.loads(path.read_text())
            return FolderSettings(int(raw.get("text_len", DEFAULT_TEXT_LEN)), _size(raw, path))
    return FolderSettings()


def _size(raw: dict, path: Path) -> tuple[int, int]:
    size = raw.get("default_size", WAN_DEFAULT_SIZE)
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{path}: default_size must be [height, width] of positive integers; got {size!r}")
    return (size[0], size[1])
