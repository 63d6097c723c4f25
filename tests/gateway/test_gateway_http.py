"""The gateway's HTTP side without a browser: auth, the API's errors, readiness, metrics, and its configuration."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from tokentrim_gateway.config import ConfigError, build_parser, load_config

from tests.gateway.gateway_support import GatewayThread, http_get
from tokentrim_server.server.background import BackgroundServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"


def http_post(url: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def guarded(server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text("first-token\nsecond-token\n")
    running = GatewayThread(server.target, "--token-file", str(tokens), "--no-record")
    yield running
    running.close()


def test_viewer_token_is_required_where_it_matters(guarded: GatewayThread) -> None:
    assert http_get(guarded.url)[0] == 200  # the page itself, which then asks for the token
    assert json.loads(http_get(f"{guarded.url}api/config")[1]) == {"auth": True}
    status, body = http_get(f"{guarded.url}api/info")
    assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
    assert http_get(f"{guarded.url}api/info", token="wrong")[0] == 401
    status, body = http_get(f"{guarded.url}api/info", token="second-token")
    assert status == 200
    info = json.loads(body)
    assert info["server"]["model"] == "tiny" and info["ice_servers"] == []
    assert {policy["name"] for policy in info["server"]["cache_policies"]} >= {"none", "tokentrim", "random"}
    assert http_post(f"{guarded.url}api/offer", b"{}")[0] == 401


def test_bad_offers_are_refused_with_the_field(gateway: GatewayThread) -> None:
    status, body = http_post(f"{gateway.url}api/offer", b"not json")
    assert status == 400 and body["message"].startswith("request:")
    status, body = http_post(f"{gateway.url}api/offer", json.dumps({"sdp": 3, "type": "offer"}).encode())
    assert status == 400 and body["message"].startswith("request:")
    status, body = http_post(f"{gateway.url}api/offer", json.dumps({"sdp": "garbage", "type": "offer"}).encode())
    assert status == 400 and body["message"].startswith("sdp:")
    assert not gateway.gateway.viewers  # a refused offer leaves no viewer behind
    assert http_get(f"{gateway.url}api/viewers/nobody/recording.mp4")[0] == 404


def test_readiness_follows_the_server(gateway: GatewayThread) -> None:
    assert http_get(f"{gateway.url}healthz")[0] == 200
    assert http_get(f"{gateway.url}readyz")[0] == 200
    unreachable = GatewayThread("127.0.0.1:9", "--no-record", "--metrics-port", "-1")
    try:
        assert http_get(f"{unreachable.url}healthz")[0] == 200
        assert http_get(f"{unreachable.url}readyz")[0] == 503
        status, body = http_get(f"{unreachable.url}api/info")
        assert status == 502 and json.loads(body)["code"] == "UNAVAILABLE"
    finally:
        unreachable.close()


def test_metrics_endpoint_exports_the_gateway_series(gateway: GatewayThread) -> None:
    status, body = http_get(gateway.metrics_url)
    assert status == 200
    names = set(re.findall(r"^(tokentrim_gateway_\w+?)(?:_total|_created)?[{ ]", body.decode(), flags=re.MULTILINE))
    assert names == {"tokentrim_gateway_viewers", "tokentrim_gateway_sessions_active",
                     "tokentrim_gateway_sessions_ended", "tokentrim_gateway_frames_sent",
                     "tokentrim_gateway_frames_dropped", "tokentrim_gateway_playout_stalls"}


def test_configuration_is_checked() -> None:
    config = load_config(["--ice-server", "stun:stun.example.com:3478", "--ice-server", "turn:turn.example.com",
                          "--ice-username", "u", "--ice-credential", "c"], environ={"TOKENTRIM_TOKEN": " t \n",
                                                                                    "TOKENTRIM_GATEWAY_TOKENS": "a,b"})
    assert config.server_token == "t" and config.viewer_tokens == {"a", "b"}
    assert [server.as_json() for server in config.ice_servers] == [
        {"urls": "stun:stun.example.com:3478"}, {"urls": "turn:turn.example.com", "username": "u", "credential": "c"}]
    for flags, message in [(["--tls-cert", "x"], "--tls-key"), (["--server-tls-key", "x"], "--server-tls-cert"),
                           (["--buffer-chunks", "0"], "--buffer-chunks"), (["--credits", "0"], "--credits"),
                           (["--listen", "8080"], "--listen"), (["--token-file", "/nonexistent"], "--token-file")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(flags, environ={})


def test_every_flag_is_documented() -> None:
    documented = set(re.findall(r"`(--[a-z-]+)", DOCS.read_text()))
    flags = {option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"}
    assert flags <= documented, f"not in docs/gateway.md: {sorted(flags - documented)}"
