"""``tokentrim-gateway``: serve the viewer page until SIGTERM or Ctrl-C, then end every viewer's session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiohttp import web
from tokentrim_client import AsyncClient

from tokentrim_gateway.config import ConfigError, GatewayConfig, load_config
from tokentrim_gateway.metrics import GatewayMetrics
from tokentrim_gateway.web import Gateway, build_app, build_metrics_app

log = logging.getLogger("tokentrim_gateway")


def server_client(config: GatewayConfig) -> AsyncClient:
    return AsyncClient(config.server, token=config.server_token, root_certificates=config.server_tls_ca,
                       client_certificate=config.server_tls_cert, client_key=config.server_tls_key,
                       tls=config.server_tls, timeout=10.0,
                       channel_options=[("grpc.lb_policy_name", config.server_load_balancing)])


def https_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


@contextlib.asynccontextmanager
async def recordings_folder(config: GatewayConfig) -> AsyncIterator[Path | None]:
    if not config.record:
        yield None
    elif config.recording_dir is not None:
        config.recording_dir.mkdir(parents=True, exist_ok=True)
        yield config.recording_dir
    else:
        with tempfile.TemporaryDirectory(prefix="tokentrim-gateway-") as folder:
            yield Path(folder)


@contextlib.asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, str, int | None]]:
    """The gateway serving: its page URL and metrics port (None without). Leaving ends every viewer's session."""
    metrics = GatewayMetrics()
    client = server_client(config)
    runners: list[web.AppRunner] = []
    async with recordings_folder(config) as recordings, client:
        gateway = Gateway(config, client, metrics, recordings)
        try:
            runner = web.AppRunner(build_app(gateway), access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, config.host, config.port, ssl_context=https_context(config))
            await site.start()
            port = runner.addresses[0][1]
            metrics_port = None
            if config.metrics_port >= 0:
                metrics_runner = web.AppRunner(build_metrics_app(metrics), access_log=None)
                await metrics_runner.setup()
                runners.append(metrics_runner)
                await web.TCPSite(metrics_runner, config.metrics_address, config.metrics_port).start()
                metrics_port = metrics_runner.addresses[0][1]
            scheme = "https" if config.tls_cert else "http"
            host = config.host if config.host not in ("", "0.0.0.0", "::") else "localhost"
            yield gateway, f"{scheme}://{host}:{port}/", metrics_port
        finally:
            await gateway.close()
            for runner in reversed(runners):
                await runner.cleanup()


async def serve(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(config) as (gateway, url, metrics_port):
        if not config.viewer_tokens and config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s without viewer tokens: anyone who reaches it can start sessions "
                        "(--token-file)", config.listen)
        metrics = f"; metrics on :{metrics_port}/metrics" if metrics_port is not None else ""
        log.info("server %s; viewer page at %s%s", config.server, url, metrics)
        print(f"tokentrim-gateway: open {url}", flush=True)
        await stop.wait()
        log.info("stopping: ending %d viewers' sessions", len(gateway.viewers))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as error:
        print(f"tokentrim-gateway: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except OSError as error:  # the port is taken, a certificate unreadable
        print(f"tokentrim-gateway: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
