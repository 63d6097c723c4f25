"""``make demo``: start the server on the demo model, stream a short video with the client CLI, stop it.

The demo model is the drift-lab model ``drift_lab/weights/cpu-wide-lanes-switch-long-seed0``, which passes the
lab's quality gate (docs/drift-lab.md): 64x64 circles and squares moving sideways in rows of their own,
fine-tuned to follow prompt switches. ``--model`` picks any other: ``tiny`` (the embedded random-weight model,
whose frames are noise) or a model folder. It runs ``tokentrim-server --model MODEL`` on free localhost ports,
waits until its health check says SERVING, streams a prompt into ``out/demo.mp4`` with ``tokentrim-client
stream`` (with one prompt switch and the TokenTrim policy when it is installed), prints where the metrics are
and a few of their values, then stops the server with SIGTERM, as an orchestrator would.

A lab model only knows its world's captions ("a red circle and a blue square bouncing on a plain gray
background"), streams at the schedule and with the attention window it was trained with (its
``training.json``), and from noise alone draws only some of the named objects: its session uses the
``lab_scene`` hook (``plugins/labscene``), which starts the first chunk from a render of the scene the prompt
names. The default switch recolours both objects (red and blue to yellow and green): the old colours are gone
within a latent frame of it, though the model does not always give each shape its own new colour
(benchmarks/RESULTS.md, "prompt switches").
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
from PIL import Image

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "drift_lab" / "weights" / "cpu-wide-lanes-switch-long-seed0"

LAB_PROMPT = "a red circle and a blue square bouncing on a plain gray background"
LAB_SWITCH = "3:a yellow circle and a green square bouncing on a plain gray background"
TINY_PROMPT = "a red car drives along the beach at sunset"
TINY_SWITCH = "3:a blue boat sails across a calm lake"
SHOWN_SERIES = ("tokentrim_chunks_total", "tokentrim_frames_total", "tokentrim_policy_triggers_total",
                "tokentrim_sessions_ended_total")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_command() -> list[str]:
    found = shutil.which("tokentrim-client", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "tokentrim_client.cli"]


def wait_until_serving(target: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        if subprocess.run([*client_command(), "health", "--target", target], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit(f"the server did not become SERVING within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="a model folder or tiny (embedded, noise); default: the drift-lab model "
                        f"{DEFAULT_MODEL.name} (a lab model gets its world's captions, the attention window it "
                        "was trained with and the lab_scene hook)")
    parser.add_argument("--prompt", default=None, help="default: a caption the model knows")
    parser.add_argument("--switch", default=None, help="CHUNK:PROMPT (default: another caption at chunk 3)")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed (default: %(default)s). The client runs with one chunk of credit, so the "
                        "switch lands on its chunk and the same seed streams the same video")  # fmt: skip
    parser.add_argument("--out", default="out/demo.mp4")
    parser.add_argument("--strip", default=None, help="also write a PNG strip of evenly spaced frames here")
    args = parser.parse_args(argv)
    if args.model != "tiny" and not Path(args.model).is_dir():
        parser.error(f"--model: no model folder at {args.model} (tiny: the embedded model)")
    if args.seed < 0:
        parser.error(f"--seed: must be >= 0, got {args.seed}")
    lab_options = lab_stream_options(args.model)
    args.prompt = args.prompt or (LAB_PROMPT if lab_options else TINY_PROMPT)
    args.switch = args.switch or (LAB_SWITCH if lab_options else TINY_SWITCH)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    target, metrics_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    server = subprocess.Popen([
        sys.executable, "-m", "tokentrim_server.server", "--model", args.model, "--listen", target,
        "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port), "--log-level", "WARNING",
    ])
    try:
        wait_until_serving(target, server)
        print(f"server on {target}, metrics at {metrics_url}", flush=True)
        stream = [*client_command(), "stream", "--target", target, "--prompt", args.prompt,
                  "--chunks", str(args.chunks), "--seed", str(args.seed), "--credits", "1",
                  "--switch", args.switch, "--out", args.out,
                  "--reports", str(Path(args.out).with_suffix(".jsonl"))]
        for key, value in (lab_options or {}).items():
            stream += ["--option", f"{key}={json.dumps(value)}"]
        if lab_options is not None:
            stream += ["--hook", "lab_scene"]
        streamed = subprocess.run([*stream, "--policy", "tokentrim"] if _has_tokentrim(target) else stream)
        if streamed.returncode != 0:
            raise SystemExit(f"tokentrim-client stream failed with exit code {streamed.returncode}")
        with urllib.request.urlopen(metrics_url, timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(SHOWN_SERIES):
                    print(f"  {line}")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
    print(f"server stopped (exit code {code}); video in {args.out}")
    if args.strip and code == 0:
        write_strip(Path(args.out), Path(args.strip))
        print(f"strip of frames in {args.strip}")
    return code


def write_strip(video: Path, out: Path, count: int = 8, scale: int = 2) -> None:
    """``count`` evenly spaced frames of ``video`` side by side, each enlarged ``scale`` times (nearest), as a PNG."""
    with av.open(str(video)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise SystemExit(f"{video} holds no frames")
    picked = [frames[round(i * (len(frames) - 1) / max(count - 1, 1))] for i in range(min(count, len(frames)))]
    width, height = picked[0].width * scale, picked[0].height * scale
    strip = Image.new("RGB", (width * len(picked) + 2 * (len(picked) - 1), height), "white")
    for index, frame in enumerate(picked):
        strip.paste(frame.resize((width, height), Image.Resampling.NEAREST), (index * (width + 2), 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out)


def lab_stream_options(model: str) -> dict[str, Any] | None:
    """The Self Forcing options a drift-lab model is sampled with (``training.json``'s ``pipeline_options``: the
    schedule it was trained at and its training clip as attention window), else ``None`` (not a lab model)."""
    record = Path(model) / "training.json"
    if not record.is_file():
        return None
    training = json.loads(record.read_text())
    recorded = training.get("pipeline_options", {}).get("self_forcing")
    if recorded is not None:
        return dict(recorded)
    # Recorded before the schedule was: Self Forcing's default schedule, the training clip as window.
    return {"local_attn_frames": int(training.get("clip_chunks", 3)) * int(training.get("frames_per_block", 3))}


def _has_tokentrim(target: str) -> bool:
    info = subprocess.run([*client_command(), "info", "--target", target], capture_output=True, text=True)
    return '"tokentrim"' in info.stdout


if __name__ == "__main__":
    sys.exit(main())
