"""The tokentrim-client CLI against the fake server."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import grpc
import pytest
from tokentrim_client.cli.main import build_parser, main

from .fake_streaming_server import FPS, FakeServer, unused_port


def _video(path: Path) -> tuple[int, int, int, float]:
    """Frames, width, height and rate of an MP4, decoding every frame (so it must be complete)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, float(stream.average_rate)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_stream_writes_an_mp4_and_a_report_log(fake_server: FakeServer, tmp_path: Path) -> None:
    out, reports = tmp_path / "out.mp4", tmp_path / "reports.jsonl"
    argv = [
        "stream", "--target", fake_server.target, "--prompt", "a red car", "--chunks", "4", "--credits", "1",
        "--switch", "2:a blue car", "--seed", "3", "--jpeg-quality", "80", "--option", "local_attn_frames=21",
        "--policy", "tokentrim", "--policy-param", "threshold=0.5", "--hook", "flowmo", "--hook-param",
        "flowmo.steps=4", "--out", str(out), "--reports", str(reports),
    ]  # fmt: skip
    assert main(argv) == 0
    assert _video(out) == (12, 32, 24, FPS)
    records = _lines(reports)
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["prompt_version"] for r in records] == [0, 0, 1, 1]  # --credits 1 makes the switch exact
    assert records[1]["cache_report"]["triggered"] and records[1]["cache_report"]["severity"] == 0.75
    assert records[0]["timings"]["denoise_seconds"] == 0.5 and records[0]["hook_reports"][0]["name"] == "flowmo"
    start = fake_server.service.sessions[0].start
    assert (
        start.seed == 3
        and start.output.jpeg_quality == 80
        and dict(start.pipeline_options) == {"local_attn_frames": 21}
    )
    assert start.cache_policy.name == "tokentrim" and dict(start.cache_policy.params) == {"threshold": 0.5}
    assert [(h.name, dict(h.params)) for h in start.session_hooks] == [("flowmo", {"steps": 4})]
    assert fake_server.service.sessions[0].prompt_changes == ["a blue car"]


def test_odd_sizes_are_padded_and_fps_overrides(fake_server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    argv = ["stream", "--target", fake_server.target, "--prompt", "p", "--chunks", "2", "--encoding", "raw",
            "--width", "31", "--height", "23", "--fps", "8", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert _video(out) == (6, 32, 24, 8.0)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--switch", "abc"], "--switch"),
        (["--switch", "x:a car"], "--switch"),
        (["--switch", "0:a car"], "--switch"),
        (["--switch", "2:"], "--switch"),
        (["--chunks", "4", "--switch", "4:a car"], "--switch"),
        (["--switch", "2:a", "--switch", "2:b"], "--switch"),
        (["--hook-param", "flowmo.steps=4"], "--hook-param"),
        (["--hook", "flowmo", "--hook-param", "flowmo=4"], "--hook-param"),
        (["--option", "mode=fast"], "--option"),
        (["--policy-param", "a=1", "--policy-param", "a=2"], "--policy-param"),
        (["--credits", "-1"], "--credits"),
        (["--token-file", "/nonexistent/token"], "--token-file"),
        (["--out", "/nonexistent/folder/out.mp4"], "--out"),
        (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-key"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(extra: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["stream", "--target", "127.0.0.1:1", "--prompt", "p", *extra])
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err


def test_server_errors_exit_1_with_the_code_and_message(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.service.failures.append((grpc.StatusCode.INVALID_ARGUMENT, "start.x: bad"))
    assert main(["stream", "--target", fake_server.target, "--prompt", "p", "--chunks", "1"]) == 1
    assert "INVALID_ARGUMENT: start.x: bad" in capsys.readouterr().err


def test_token_comes_from_the_file_or_the_environment(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server.service.required_token = "tok"
    monkeypatch.setenv("TOKENTRIM_TOKEN", "tok")
    assert main(["info", "--target", fake_server.target]) == 0
    monkeypatch.setenv("TOKENTRIM_TOKEN", "wrong")
    token_file = tmp_path / "token"
    token_file.write_text("tok\n")
    assert main(["info", "--target", fake_server.target, "--token-file", str(token_file)]) == 0
    assert main(["info", "--target", fake_server.target]) == 1  # UNAUTHENTICATED with the wrong env token
    assert [m["authorization"] for m in fake_server.service.info_metadata] == ["Bearer tok"] * 2 + ["Bearer wrong"]


def test_info_prints_json(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--target", fake_server.target]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "fake" and info["frames_per_second"] == FPS


def test_health_exit_codes(fake_server: FakeServer) -> None:
    assert main(["health", "--target", fake_server.target]) == 0
    fake_server.set_serving(False)
    assert main(["health", "--target", fake_server.target]) == 1
    assert main(["health", "--target", f"127.0.0.1:{unused_port()}", "--timeout", "2"]) == 1


def _stream_in_background(target: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    out, reports = tmp_path / "out.mp4", tmp_path / "reports.jsonl"
    command = [sys.executable, "-m", "tokentrim_client.cli.main", "stream", "--target", target, "--prompt", "p",
               "--credits", "1", "--out", str(out), "--reports", str(reports)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(_lines(reports)) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "the CLI did not stream"
        time.sleep(0.05)
    return process, out, reports


def test_ctrl_c_stops_cleanly_and_keeps_a_playable_mp4(fake_server: FakeServer, tmp_path: Path) -> None:
    fake_server.service.chunk_delay = 0.05  # unbounded session: only Ctrl-C ends it
    process, out, reports = _stream_in_background(fake_server.target, tmp_path)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    record = fake_server.service.sessions[0]
    assert record.stop_received and "stopped: " in stderr
    chunks = len(_lines(reports))
    assert chunks == record.chunks_sent  # everything the server sent was kept
    assert _video(out)[0] == 3 * chunks


def test_second_ctrl_c_quits_at_once_and_still_finalises_the_mp4(fake_server: FakeServer, tmp_path: Path) -> None:
    fake_server.service.chunk_delay = 0.05
    fake_server.service.ignore_stop = True  # a server that never honours stop: only the second Ctrl-C ends it
    process, out, reports = _stream_in_background(fake_server.target, tmp_path)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert _video(out)[0] == 3 * len(_lines(reports))
    time.sleep(0.1)
    assert fake_server.service.sessions[0].cancelled


def test_every_flag_is_documented() -> None:
    """docs/client.md names every flag of every command, and --help describes each."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        assert f"tokentrim-client {name}" in docs
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in docs, f"{name} {flag} is not in docs/client.md"
                    assert action.help, f"{name} {flag} has no help"
