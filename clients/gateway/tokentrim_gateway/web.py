"""The HTTP side: the page, its JSON API (server info, WebRTC offer/answer, recordings) and the metrics endpoint."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from tokentrim_client import AsyncClient, ClientError

from tokentrim_gateway.config import GatewayConfig
from tokentrim_gateway.metrics import GatewayMetrics
from tokentrim_gateway.viewer import Viewer

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("tokentrim_gateway") / "static"))
# Open to anyone: the page itself, what it needs to ask for a token, probes, and the unload beacon (which cannot
# carry a header; the viewer id in its path is an unguessable capability instead).
PUBLIC = ("/", "/api/config", "/healthz", "/readyz")
PUBLIC_PREFIXES = ("/static/",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class Gateway:
    """The viewers and the one gRPC client they share."""

    def __init__(self, config: GatewayConfig, client: AsyncClient, metrics: GatewayMetrics,
                 recordings: Path | None) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics
        self.recordings = recordings
        self.viewers: dict[str, Viewer] = {}

    def authorized(self, request: web.Request) -> bool:
        if not self.config.viewer_tokens:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # Every token is compared, in constant time, so the answer's timing says nothing about which one matched.
        matches = [hmac.compare_digest(token.encode(), known.encode()) for known in self.config.viewer_tokens]
        return scheme.lower() == "bearer" and any(matches)

    async def add_viewer(self, sdp: str, kind: str) -> Viewer:
        viewer = Viewer(secrets.token_urlsafe(16), self.client, self.config, self.metrics, self.recordings,
                        on_closed=lambda gone: self.viewers.pop(gone.id, None))
        self.viewers[viewer.id] = viewer
        try:
            await viewer.answer(sdp, kind)
        except BaseException:
            await viewer.close()
            raise
        return viewer

    async def close(self) -> None:
        for viewer in list(self.viewers.values()):
            await viewer.close()


def build_app(gateway: Gateway) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path in PUBLIC or request.path.startswith(PUBLIC_PREFIXES) or (
            request.method == "POST" and request.path.endswith("/close"))
        if not public and not gateway.authorized(request):
            return json_error(401, "UNAUTHENTICATED", "a viewer token is required (Authorization: Bearer ...)")
        return await handler(request)

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def config(_: web.Request) -> web.Response:
        return web.json_response({"auth": bool(gateway.config.viewer_tokens)})

    async def info(_: web.Request) -> web.Response:
        try:
            response = await gateway.client.server_info()
        except ClientError as error:
            return json_error(502, error.code.name, error.details)
        return web.json_response({
            "server": MessageToDict(response, preserving_proto_field_name=True),
            "ice_servers": [server.as_json() for server in gateway.config.ice_servers],
        })

    async def offer(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return json_error(400, "INVALID_ARGUMENT", "request: the body must be JSON")
        if not (isinstance(body, dict) and isinstance(body.get("sdp"), str) and body.get("type") == "offer"):
            return json_error(400, "INVALID_ARGUMENT", "request: expected {\"sdp\": ..., \"type\": \"offer\"}")
        if len(gateway.viewers) >= gateway.config.max_viewers:
            return json_error(503, "RESOURCE_EXHAUSTED", f"max_viewers: {gateway.config.max_viewers} viewers are "
                                                         "connected; try again later")
        try:
            viewer = await gateway.add_viewer(body["sdp"], body["type"])
        except (ValueError, LookupError, TypeError) as error:
            # aiortc's SDP parser says what it could not use in all of these, depending on what is malformed.
            return json_error(400, "INVALID_ARGUMENT", f"sdp: not a usable WebRTC offer ({error})")
        log.info("viewer %s connected (%d connected)", viewer.id, len(gateway.viewers))
        answer = viewer.pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "viewer": viewer.id})

    def find_viewer(request: web.Request) -> Viewer:
        viewer = gateway.viewers.get(request.match_info["viewer"])
        if viewer is None:
            raise web.HTTPNotFound(text="no such viewer")
        return viewer

    async def close(request: web.Request) -> web.Response:
        await find_viewer(request).close()
        return web.Response(status=204)

    async def recording(request: web.Request) -> web.StreamResponse:
        viewer = find_viewer(request)
        if viewer.session_running:
            return json_error(409, "FAILED_PRECONDITION", "the session is still running; stop it first")
        if viewer.recording is None or not viewer.recording.is_file():
            return json_error(404, "NOT_FOUND", "no recording: no frames were received, or --no-record is set")
        return web.FileResponse(viewer.recording, headers={
            "Content-Type": "video/mp4", "Content-Disposition": 'attachment; filename="tokentrim-session.mp4"'})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        try:
            serving = await gateway.client.health()
        except ClientError as error:
            return web.Response(status=503, text=f"server: {error.code.name}\n")
        return web.Response(status=200 if serving else 503, text="ok\n" if serving else "server: NOT_SERVING\n")

    app = web.Application(middlewares=[auth], client_max_size=256 * 1024)
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/info", info)
    app.router.add_post("/api/offer", offer)
    app.router.add_post("/api/viewers/{viewer}/close", close)
    app.router.add_get("/api/viewers/{viewer}/recording.mp4", recording)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def build_metrics_app(metrics: GatewayMetrics) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
