"""The committed drift-lab models load through the server's own loader and stream through the server, unmodified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokentrim_client import Client

from drift_lab.world import OBJECT_COLOURS, WorldSpec, sample_scene
from tests.server_support import ServerThread
from tokentrim_server.cli.demo import DEFAULT_MODEL, LAB_PROMPT, lab_stream_options, main
from tokentrim_server.loading.model import ModelSpec, load_model

WEIGHTS = Path(__file__).resolve().parents[2] / "drift_lab" / "weights"
COMMITTED = sorted(folder for folder in WEIGHTS.glob("*") if (folder / "model_index.json").is_file())
# A model that passes the lab's quality gate (drift_lab/weights/README.md).
PASSING = WEIGHTS / "cpu-wide-lanes-seed0"


def test_lab_models_are_committed() -> None:
    assert COMMITTED, f"no lab model folders under {WEIGHTS}"


@pytest.mark.parametrize("folder", [*COMMITTED[:1], PASSING], ids=lambda folder: folder.name)
def test_lab_model_streams_through_the_server(folder: Path) -> None:
    bundle = load_model(ModelSpec(model=str(folder)))
    height, width = bundle.default_size
    # A caption of the world the model was trained on, at the size it was trained at (the server's default).
    caption = sample_scene(7, WorldSpec(height=height, width=width)).caption
    server = ServerThread(bundle, "--model", str(folder), "--default-policy", "tokentrim")
    try:
        with Client(server.target) as client:
            info = client.server_info()
            # As make demo --model FOLDER streams it: at its trained schedule, with its trained attention window.
            options = lab_stream_options(str(folder))
            result = client.generate(caption, chunks=3, seed=7, encoding="raw", pipeline_options=options)
    finally:
        server.close()
    assert info.model == folder.name  # the public name: the folder's, never its path
    assert result.ended is not None
    frames = result.frames
    assert frames is not None
    # 3 chunks of 3 latent frames through the 4x causal VAE: 1 + 4 * 8 frames, at the model's own size.
    assert frames.shape == (33, height, width, 3)
    assert [chunk.index for chunk in result.chunks] == [0, 1, 2]
    assert all(chunk.report["policy"] == "tokentrim" for chunk in result.chunks)


def test_the_passing_model_records_a_passing_gate() -> None:
    # Written by `python -m drift_lab.gate FOLDER --record` on the finished model, thresholds unchanged.
    record = json.loads((PASSING / "training.json").read_text())
    assert record["finished"] and record["gate"]["pass"] and record["gate"]["seeds"] >= 8
    assert record["world"]["lanes"] is True


def test_the_demo_model_streams_the_shapes_its_prompt_names() -> None:
    # make demo's default: the passing model, its trained schedule and window, its first chunk started from a
    # render of the prompt's scene (lab_scene), since from noise alone a lab model draws only some of the named objects.
    assert DEFAULT_MODEL == PASSING
    bundle = load_model(ModelSpec(model=str(DEFAULT_MODEL)))
    server = ServerThread(bundle, "--model", str(DEFAULT_MODEL))
    try:
        with Client(server.target) as client:
            result = client.generate(LAB_PROMPT, chunks=3, seed=4, encoding="raw", hooks=["lab_scene"],
                                     pipeline_options=lab_stream_options(str(DEFAULT_MODEL)))  # fmt: skip
    finally:
        server.close()
    assert result.ended is not None and result.frames is not None
    assert [report["name"] for report in result.chunks[0].hook_reports] == ["lab_scene"]
    # The prompt's red circle and blue square (about 100 px each at 64x64) are there from the first frame to
    # the last, and no other object colour is.
    frames = result.frames.astype(np.float32)
    for index in (0, len(frames) // 2, len(frames) - 1):
        pixels = {colour: int((np.linalg.norm(frames[index] - np.asarray(rgb), axis=-1) < 60).sum())
                  for colour, rgb in OBJECT_COLOURS.items()}  # fmt: skip
        assert pixels["red"] > 40 and pixels["blue"] > 40, (index, pixels)
        assert max(count for colour, count in pixels.items() if colour not in ("red", "blue")) < 15, (index, pixels)


def test_the_demo_names_a_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "absent"), "--out", str(tmp_path / "demo.mp4")])
    assert exit_info.value.code == 2
    assert "--model: no model folder at" in capsys.readouterr().err
