"""``tokentrim-generate``: stream a prompt through a pipeline into an mp4, chunk by chunk, in process."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tokentrim_server.cli.options import add_model_arguments, model_spec, parse_option
from tokentrim_server.engine.generation import GenerationSession, SessionPlan
from tokentrim_server.hooks import create_hook
from tokentrim_server.loading.model import load_model
from tokentrim_server.pipelines.registry import PIPELINES, pipeline_options
from tokentrim_server.policies import create_policy
from tokentrim_server.video import Mp4Writer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokentrim-generate", description=__doc__)
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--out", default="out/video.mp4", help="output mp4 path (default: %(default)s)")
    parser.add_argument("--pipeline", default="self_forcing", choices=sorted(PIPELINES))
    parser.add_argument("--chunks", type=int, default=4, help="chunks (blocks) to generate (default: %(default)s)")
    parser.add_argument("--height", type=int, default=None, help="frame height (default: 480, tiny model 128)")
    parser.add_argument("--width", type=int, default=None, help="frame width (default: 832, tiny model 128)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives the same video")
    parser.add_argument("--fps", type=int, default=16, help="frame rate of the mp4 (default: %(default)s)")
    parser.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline option, repeatable (e.g. local_attn_frames=12, sink_frames=3)")
    parser.add_argument("--hook", type=parse_hook, action="append", default=[], metavar="NAME[=JSON]",
                        help='session hook, repeatable, with its parameters as a JSON object '
                             '(e.g. flowmo or \'flowmo={"iterations": 3}\')')
    add_model_arguments(parser)
    return parser


def parse_hook(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME={...}``: a session hook and its parameters."""
    name, sep, params = text.partition("=")
    try:
        values = json.loads(params) if sep else {}
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"hook parameters must be a JSON object: {error}") from None
    if not name or not isinstance(values, dict):
        raise argparse.ArgumentTypeError(f"expected NAME or NAME={{...}}, got {text!r}")
    return name, values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.chunks <= 0:
        raise SystemExit("--chunks must be > 0")
    bundle = load_model(model_spec(args))
    height, width = args.height or bundle.default_size[0], args.width or bundle.default_size[1]
    options = pipeline_options(args.pipeline, dict(args.option))
    hooks = tuple(create_hook(name, params) for name, params in args.hook)
    plan = SessionPlan(
        prompt=args.prompt, seed=args.seed, pipeline=args.pipeline, options=options, chunks=args.chunks,
        height=height, width=width, policy=create_policy("none"), hooks=hooks,
    )
    session = GenerationSession(bundle, plan)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames_total = 0
    with Mp4Writer(args.out, fps=args.fps) as writer:
        for index in range(args.chunks):
            step = session.step()
            for hook in step.result.report.hooks:
                print(f"hook {hook.name}: {hook.seconds:.2f} s {json.dumps(hook.values)}", file=sys.stderr)
            frames = session.decode(step)
            writer.write(frames)
            frames_total += frames.shape[0]
            elapsed = time.perf_counter() - started
            print(
                f"chunk {index + 1}/{args.chunks}: {frames_total} frames, {frames_total / elapsed:.1f} frames/s",
                file=sys.stderr,
            )
    session.close()
    print(f"wrote {frames_total} frames ({width}x{height}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
