"""``tokentrim-client``: argument parsing and dispatch to the commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokentrim_client.aio import AsyncClient
from tokentrim_client.cli import flags
from tokentrim_client.cli.exit_codes import EPILOG, ExitCode
from tokentrim_client.cli.probe import run_health, run_info
from tokentrim_client.cli.progress import Progress
from tokentrim_client.cli.stream import StreamPlan, run_stream
from tokentrim_client.errors import ClientError
from tokentrim_client.messages import SessionOptions
from tokentrim_client.retry import RetryPolicy

TOKEN_ENV = "TOKENTRIM_TOKEN"
DEFAULT_TARGET = "localhost:50051"


class UsageError(Exception):
    """A flag value that is wrong only in combination with others or with the file system."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentrim-client",
        description="Client of tokentrim-server, the streaming text-to-video server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = _connection_flags()
    stream = _command(
        commands,
        connection,
        "stream",
        "stream a prompt to an MP4 file",
        "Run one session: frames go to an H.264 MP4, per-chunk reports to a JSON-lines file, and a live progress "
        "line (chunks, frames per second, time to first frame, prune events) to stderr. Ctrl-C stops the session "
        "after the chunk in progress and keeps what arrived; a second Ctrl-C quits at once (the MP4 is still "
        "finalised).",
    )
    _add_stream_flags(stream)
    _command(
        commands,
        connection,
        "info",
        "print the server info as JSON",
        "Print GetServerInfo's answer (model, pipelines, cache policies and hooks with their parameter schemas, "
        "limits, versions) as JSON on stdout.",
    )
    health = _command(
        commands,
        connection,
        "health",
        "exit 0 if the server is SERVING, else 1",
        "Ask the standard gRPC health service; prints SERVING or NOT_SERVING and exits 0 only for SERVING "
        "(for container health checks).",
    )
    health.add_argument("--service", default="", help='service name to ask about (default: "", the whole server)')
    return parser


def _connection_flags() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument("--target", default=DEFAULT_TARGET, help=f"server address HOST:PORT (default: {DEFAULT_TARGET})")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the bearer token (surrounding whitespace ignored); default: the {TOKEN_ENV} "
        "environment variable; neither: no authorization header",
    )
    group.add_argument("--tls-ca", metavar="FILE", help="PEM root certificates: connect with TLS and trust these")
    group.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate chain, for servers requiring mTLS")
    group.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument("--tls", action="store_true", help="connect with TLS trusting the system's root certificates")
    group.add_argument(
        "--retries",
        type=flags.non_negative_int,
        metavar="N",
        help="retries, with exponential backoff and jitter, when the server answers UNAVAILABLE or "
        "RESOURCE_EXHAUSTED to a unary call or before a session starts (default: 3; health: 0)",
    )
    group.add_argument(
        "--timeout",
        type=flags.positive_float,
        metavar="SECONDS",
        help="deadline of each unary call (info, health) in seconds (default: 30; health: 5)",
    )
    return connection


# (retries, unary-call timeout) when not given: a container health check must answer fast and not linger.
COMMAND_DEFAULTS = {"stream": (3, 30.0), "info": (3, 30.0), "health": (0, 5.0)}


def _command(
    commands: argparse._SubParsersAction, connection: argparse.ArgumentParser, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        parents=[connection],
        help=help,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_stream_flags(parser: argparse.ArgumentParser) -> None:
    session = parser.add_argument_group("session")
    session.add_argument("--prompt", required=True, help="the text prompt")
    _count(session, "--chunks", "chunks to generate (default: 0, unbounded: until Ctrl-C or the server's limit)")
    session.add_argument("--seed", type=flags.non_negative_int, metavar="S", help="noise seed (default: server's pick)")
    session.add_argument("--pipeline", default="", metavar="P", help="pipeline name (default: the server's default)")
    _repeatable(session, "--option", flags.key_json, "KEY=JSON", "a pipeline option, e.g. local_attn_frames=21")
    session.add_argument("--policy", metavar="NAME", help="cache policy (default: the server's default)")
    _repeatable(session, "--policy-param", flags.key_json, "KEY=JSON", "a cache-policy parameter, e.g. threshold=0.5")
    _repeatable(session, "--hook", str, "NAME", "a session hook; hooks run in the order given")
    _repeatable(
        session,
        "--hook-param",
        flags.hook_key_json,
        "NAME.KEY=JSON",
        "a parameter of the hook NAME given with --hook, e.g. flowmo.steps=4",
    )
    _repeatable(
        session,
        "--switch",
        flags.switch,
        "CHUNK:PROMPT",
        "change the prompt for chunk CHUNK (>= 1): sent as soon as chunk CHUNK-1 arrives; the server applies it "
        "at its next chunk boundary, which is CHUNK itself with --credits 1",
    )
    _count(session, "--width", "frame width in pixels (default: 0, the model's)", metavar="W")
    _count(session, "--height", "frame height in pixels (default: 0, the model's)", metavar="H")
    session.add_argument(
        "--encoding",
        choices=["jpeg", "raw"],
        default="jpeg",
        help="how frames travel: jpeg (smaller) or raw RGB (exact) (default: jpeg)",
    )
    _count(session, "--jpeg-quality", "JPEG quality 1-100 (default: 0, the server's default)", metavar="Q")
    _count(session, "--credits", "flow-control credit: how many chunks the server may run ahead of this client "
           "(default: 0, the server's default)")  # fmt: skip
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="FILE.mp4", help="write the frames to this H.264 yuv420p MP4 (default: none)")
    output.add_argument(
        "--fps", type=flags.positive_float, help="frame rate of the MP4 (default: the server's frames_per_second)"
    )
    output.add_argument(
        "--reports",
        metavar="FILE.jsonl",
        help="write one JSON line per chunk: index, timings, cache report, prompt_version, hook reports",
    )
    output.add_argument("--quiet", action="store_true", help="no progress line or summary; errors only")


def _count(group: argparse._ArgumentGroup, flag: str, help: str, metavar: str = "N") -> None:
    group.add_argument(flag, type=flags.non_negative_int, default=0, metavar=metavar, help=help)


def _repeatable(
    group: argparse._ArgumentGroup, flag: str, parse: Callable[[str], Any], metavar: str, help: str
) -> None:
    group.add_argument(flag, action="append", type=parse, default=[], metavar=metavar, help=f"{help} (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if getattr(args, "quiet", False) else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )  # retry notices
    try:
        client = _client(args)
        plan = _plan(args) if args.command == "stream" else None
    except UsageError as error:
        parser.error(str(error))  # exits with ExitCode.USAGE
    try:
        return int(asyncio.run(_dispatch(args, client, plan)))
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.FAILED


async def _dispatch(args: argparse.Namespace, client: AsyncClient, plan: StreamPlan | None) -> ExitCode:
    async with client:
        if plan is not None:
            return await run_stream(client, plan, Progress(sys.stderr, quiet=args.quiet))
        if args.command == "info":
            return await run_info(client, sys.stdout)
        return await run_health(client, args.service, sys.stdout)


def _client(args: argparse.Namespace) -> AsyncClient:
    default_retries, default_timeout = COMMAND_DEFAULTS[args.command]
    retries = args.retries if args.retries is not None else default_retries
    token = _read("--token-file", args.token_file).decode().strip() if args.token_file else os.environ.get(TOKEN_ENV)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    try:
        return AsyncClient(
            args.target,
            token=token or None,
            root_certificates=_read("--tls-ca", args.tls_ca),
            client_certificate=_read("--tls-cert", args.tls_cert),
            client_key=_read("--tls-key", args.tls_key),
            retries=RetryPolicy(retries=retries),
            tls=args.tls,
            timeout=args.timeout or default_timeout,
        )
    except ValueError as error:
        raise UsageError(f"bearer token: {error}") from error


def _read(flag: str, path: str | None) -> bytes | None:
    """A file named by ``flag``; an unreadable one is a usage error naming the flag."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{flag}: {error}") from error


def _plan(args: argparse.Namespace) -> StreamPlan:
    try:
        options = SessionOptions(
            chunks=args.chunks,
            seed=args.seed,
            pipeline=args.pipeline,
            pipeline_options=flags.collect_params(args.option, "--option"),
            cache_policy=args.policy,
            policy_params=flags.collect_params(args.policy_param, "--policy-param"),
            hooks=flags.collect_hooks(args.hook, args.hook_param),
            encoding=args.encoding,
            jpeg_quality=args.jpeg_quality,
            width=args.width,
            height=args.height,
            credits=args.credits,
        )
        switches = flags.collect_switches(args.switch, args.chunks)
    except ValueError as error:
        raise UsageError(str(error)) from error
    for flag, path in (("--out", args.out), ("--reports", args.reports)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{flag}: the folder of {path} does not exist")
    return StreamPlan(args.prompt, options, switches, out=args.out, fps=args.fps, reports=args.reports)


if __name__ == "__main__":
    sys.exit(main())
