"""The gateway's settings: command-line flags, with the secrets also readable from the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VIEWER_TOKENS_ENV = "TOKENTRIM_GATEWAY_TOKENS"
SERVER_TOKEN_ENV = "TOKENTRIM_TOKEN"  # the same variable tokentrim-client reads
# TURN credentials are secrets too: from the environment they stay off the command line (and out of `ps`).
ICE_USERNAME_ENV = "TOKENTRIM_GATEWAY_ICE_USERNAME"
ICE_CREDENTIAL_ENV = "TOKENTRIM_GATEWAY_ICE_CREDENTIAL"


class ConfigError(ValueError):
    """A setting that cannot work; the command exits 2 with this message."""


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, as RTCPeerConnection takes it (the page gets the same list)."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, str]:
        entry = {"urls": self.urls}
        if self.username is not None:
            entry["username"] = self.username
        if self.credential is not None:
            entry["credential"] = self.credential
        return entry


@dataclass(frozen=True)
class GatewayConfig:
    listen: str = "127.0.0.1:8080"
    server: str = "localhost:50051"
    server_token: str | None = None
    server_tls: bool = False
    server_tls_ca: Path | None = None
    server_tls_cert: Path | None = None
    server_tls_key: Path | None = None
    server_load_balancing: str = "pick_first"
    viewer_tokens: frozenset[str] = frozenset()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ice_servers: tuple[IceServer, ...] = ()
    buffer_chunks: float = 2.0
    credits: int = 1
    max_viewers: int = 8
    jpeg_quality: int = 0
    record: bool = True
    recording_dir: Path | None = None
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9465
    log_level: str = "INFO"

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentrim-gateway",
        description="Serve a browser viewer of tokentrim-server sessions over WebRTC (docs/gateway.md).",
    )
    web = parser.add_argument_group("viewers (HTTP and WebRTC)")
    web.add_argument("--listen", default=GatewayConfig.listen, metavar="HOST:PORT",
                     help="address of the page and its API (default %(default)s)")
    web.add_argument("--token-file", type=Path, metavar="FILE",
                     help=f"bearer tokens viewers must present, one per line; else ${VIEWER_TOKENS_ENV} "
                          "(comma-separated); with neither, no token is asked for")
    web.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain: serve HTTPS")
    web.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    web.add_argument("--ice-server", action="append", default=[], metavar="URL",
                     help="a STUN or TURN URL for both peers, e.g. turn:turn.example.com:3478 (repeatable; "
                          "default none: host candidates, enough on one machine or network)")
    web.add_argument("--ice-username", metavar="NAME", help=f"username for the TURN servers; else ${ICE_USERNAME_ENV}")
    web.add_argument("--ice-credential", metavar="SECRET",
                     help=f"credential for the TURN servers; else ${ICE_CREDENTIAL_ENV}")
    web.add_argument("--max-viewers", type=int, default=GatewayConfig.max_viewers, metavar="N",
                     help="connected viewers at once; more are refused with 503 (default %(default)s)")
    web.add_argument("--no-record", dest="record", action="store_false",
                     help="do not keep an mp4 of each session for the page's download button")
    web.add_argument("--recording-dir", type=Path, metavar="DIR",
                     help="where session mp4s are kept while their viewer is connected (default: a temporary "
                          "folder, removed on exit)")

    server = parser.add_argument_group("the tokentrim server (gRPC)")
    server.add_argument("--server", default=GatewayConfig.server, metavar="HOST:PORT",
                        help="the server's gRPC address (default %(default)s)")
    server.add_argument("--server-token-file", type=Path, metavar="FILE",
                        help=f"the gateway's own bearer token for the server; else ${SERVER_TOKEN_ENV}")
    server.add_argument("--server-tls", action="store_true", help="TLS with the system's root certificates")
    server.add_argument("--server-tls-ca", type=Path, metavar="FILE", help="PEM roots to trust: TLS to the server")
    server.add_argument("--server-tls-cert", type=Path, metavar="FILE",
                        help="PEM client certificate for a server requiring mutual TLS")
    server.add_argument("--server-tls-key", type=Path, metavar="FILE", help="PEM private key of --server-tls-cert")
    server.add_argument("--server-load-balancing", choices=["pick_first", "round_robin"],
                        default=GatewayConfig.server_load_balancing,
                        help="gRPC load balancing over the addresses --server resolves to; round_robin with "
                             "dns:///<headless service>:50051 spreads sessions over server replicas "
                             "(default %(default)s)")

    stream = parser.add_argument_group("streaming")
    stream.add_argument("--buffer-chunks", type=float, default=GatewayConfig.buffer_chunks, metavar="N",
                        help="playout buffer the gateway keeps, in chunks, before it takes the next chunk (and so "
                             "returns the server a credit) (default %(default)s)")
    stream.add_argument("--credits", type=int, default=GatewayConfig.credits, metavar="N",
                        help="chunks the server may generate beyond those taken into the buffer "
                             "(default %(default)s)")
    stream.add_argument("--jpeg-quality", type=int, default=GatewayConfig.jpeg_quality, metavar="Q",
                        help="JPEG quality of the frames the server sends the gateway, 1-100 (default 0: the "
                             "server's)")

    ops = parser.add_argument_group("operations")
    ops.add_argument("--metrics-address", default=GatewayConfig.metrics_address, metavar="HOST",
                     help="address of the Prometheus endpoint (default %(default)s)")
    ops.add_argument("--metrics-port", type=int, default=GatewayConfig.metrics_port, metavar="PORT",
                     help="port of /metrics (default %(default)s; 0: a free port; -1: none)")
    ops.add_argument("--log-level", default=GatewayConfig.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="(default %(default)s)")
    return parser


def _read_secret(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror}") from None


def _tokens(text: str) -> frozenset[str]:
    return frozenset(token.strip() for token in text.replace(",", "\n").splitlines() if token.strip())


def _check(config: GatewayConfig) -> GatewayConfig:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if (config.server_tls_cert is None) != (config.server_tls_key is None):
        raise ConfigError("--server-tls-cert and --server-tls-key go together")
    if config.buffer_chunks <= 0:
        raise ConfigError("--buffer-chunks must be positive")
    if config.credits < 1:
        raise ConfigError("--credits must be at least 1")
    if config.max_viewers < 1:
        raise ConfigError("--max-viewers must be at least 1")
    if not 0 <= config.jpeg_quality <= 100:
        raise ConfigError("--jpeg-quality must be in 0-100")
    if config.metrics_port < -1:
        raise ConfigError("--metrics-port must be -1, 0 or a port")
    if ":" not in config.listen or not config.listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, got {config.listen!r}")
    return config


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse flags (``argv``; None: the process's) with the environment as the fallback for the two secrets."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    viewer_tokens = (_read_secret(args.token_file, "--token-file") if args.token_file
                     else environ.get(VIEWER_TOKENS_ENV, ""))
    server_token = (_read_secret(args.server_token_file, "--server-token-file").strip() if args.server_token_file
                    else environ.get(SERVER_TOKEN_ENV, "").strip())
    username = args.ice_username or environ.get(ICE_USERNAME_ENV) or None
    credential = args.ice_credential or environ.get(ICE_CREDENTIAL_ENV) or None
    ice = tuple(IceServer(url, username, credential) if url.startswith(("turn:", "turns:")) else IceServer(url)
                for url in args.ice_server)
    return _check(GatewayConfig(
        listen=args.listen, server=args.server, server_token=server_token or None, server_tls=args.server_tls,
        server_tls_ca=args.server_tls_ca, server_tls_cert=args.server_tls_cert, server_tls_key=args.server_tls_key,
        server_load_balancing=args.server_load_balancing,
        viewer_tokens=_tokens(viewer_tokens), tls_cert=args.tls_cert, tls_key=args.tls_key, ice_servers=ice,
        buffer_chunks=args.buffer_chunks, credits=args.credits, max_viewers=args.max_viewers,
        jpeg_quality=args.jpeg_quality, record=args.record, recording_dir=args.recording_dir,
        metrics_address=args.metrics_address, metrics_port=args.metrics_port, log_level=args.log_level,
    ))
