"""A hostile or careless client cannot stall a session, hold a slot, overload the device or read internals.

One test (or table) per defect found by probing the running server; each fails on the code before the fix.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import urllib.request

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from tokentrim.v1 import streaming_pb2 as pb

from tests.policy_support import installed_distribution
from tests.server_support import RawSession, ServerThread, rpc_error, start
from tokentrim_server.policies.registry import ENTRY_POINT_GROUP as POLICY_GROUP
from tokentrim_server.server.app import is_loopback, public_model_name
from tokentrim_server.server.config import load_config

GENERATE = "/tokentrim.v1.StreamingService/Generate"
SERVER_INFO = "/tokentrim.v1.StreamingService/GetServerInfo"
# change_prompt.prompt with bytes that are not UTF-8: protobuf refuses to parse the message.
BAD_UTF8 = pb.GenerateRequest(change_prompt=pb.ChangePrompt(prompt="ab")).SerializeToString().replace(
    b"ab", b"\xff\xfe"
)
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")


def struct(**values) -> Struct:
    message = Struct()
    message.update(values)
    return message


class BytesSession:
    """A Generate call whose request messages are raw bytes, so a test can send what no SDK would."""

    def __init__(self, channel: grpc.Channel, first: bytes) -> None:
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._requests.put(first)
        method = channel.stream_stream(GENERATE, request_serializer=lambda data: data,
                                       response_deserializer=pb.GenerateResponse.FromString)
        self.call = method(iter(self._requests.get, None), timeout=60)

    def send(self, data: bytes) -> None:
        self._requests.put(data)

    def responses(self) -> list[str]:
        """The kinds of the remaining responses (raises the call's error status)."""
        return [response.WhichOneof("response") for response in self.call]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    # Not holding sessions for a resume: these tests end calls on purpose and check the slot is free at once.
    flags = ("--max-sessions", "1", "--max-denoising-steps", "6", "--max-hook-iterations", "2",
             "--resume-hold-seconds", "0")
    with ServerThread(tiny_bundle, *flags) as running:
        yield running


# ------------------------------------------------------------------ 1. undecodable messages end the session
def test_an_undecodable_message_ends_the_session_and_frees_its_slot(server):
    session = BytesSession(server.channel, pb.GenerateRequest(start=start(chunks=0, initial_credits=1))
                           .SerializeToString())
    assert next(session.call).WhichOneof("response") == "started"
    assert next(session.call).WhichOneof("response") == "chunk"
    session.send(BAD_UTF8)
    session.send(pb.GenerateRequest(grant_credits=pb.GrantCredits(chunks=1)).SerializeToString())
    error = rpc_error(session.responses)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("request:") and "tokentrim.v1.GenerateRequest" in error.details()
    server.wait_idle(timeout=10)
    # The only slot is free again.
    assert len(list(RawSession(server.stub, start(chunks=1)).chunks())) == 1


# ------------------------------------------------------------------ 4. undecodable first messages and info calls
def test_an_undecodable_first_message_is_invalid_argument(server):
    error = rpc_error(BytesSession(server.channel, b"\xff\xff\xff").responses)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("request:")
    server.wait_idle(timeout=10)


def test_server_info_with_garbage_is_invalid_argument(server):
    method = server.channel.unary_unary(SERVER_INFO, request_serializer=lambda data: data,
                                        response_deserializer=pb.GetServerInfoResponse.FromString)
    error = rpc_error(lambda: method(b"\x0a\xff\xff", timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("request:") and "Error" not in error.details()


FAILING_POLICY_MODULE = "thirdparty_failing_policy"
FAILING_POLICY_SOURCE = '''
from tokentrim_server.policies import CachePolicy, Decision


class FailingPolicy(CachePolicy):
    name = "failing"
    description = "Test policy: fails while judging a chunk, with internals in its message."

    @property
    def stage(self):
        return "final"

    def inspect(self, candidate, cache):
        raise RuntimeError("secret internals at /opt/private/path")
'''


def test_a_server_fault_gives_an_error_id_never_the_exception(tiny_bundle, tmp_path, monkeypatch, caplog):
    entry = f"failing = {FAILING_POLICY_MODULE}:FailingPolicy"
    with (installed_distribution(tmp_path, monkeypatch, FAILING_POLICY_MODULE, FAILING_POLICY_SOURCE, POLICY_GROUP,
                                 entry),
          ServerThread(tiny_bundle) as server, caplog.at_level(logging.ERROR)):
        session = RawSession(server.stub, start(cache_policy=pb.PluginConfig(name="failing")))
        error = rpc_error(lambda: list(session.chunks()))
        server.wait_idle()
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details()
    assert "RuntimeError" not in details and "secret" not in details and "/opt" not in details
    error_id = ERROR_ID.search(details).group(1)
    logged = [record for record in caplog.records if error_id in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback, once, under the id
    assert all(error_id not in record.getMessage() for record in caplog.records if record is not logged[0])


# ------------------------------------------------------------------ 3 and 8. typed, finite, ranged options
BAD_OPTIONS = {
    "frames_per_block fraction": (struct(frames_per_block=2.5), "frames_per_block"),
    "frames_per_block bool": (struct(frames_per_block=True), "frames_per_block"),
    "local_attn_frames fraction": (struct(local_attn_frames=4.5), "local_attn_frames"),
    "denoising_steps fraction": (struct(denoising_steps=[999.5, 500]), "denoising_steps"),
    "timestep_shift huge": (struct(timestep_shift=1e30), "timestep_shift"),
    "timestep_shift nan": (struct(timestep_shift=math.nan), "timestep_shift"),
    "context_noise infinite": (struct(context_noise=math.inf), "context_noise"),
    "warp_denoising_step string": (struct(warp_denoising_step="yes"), "warp_denoising_step"),
    "sink_frames huge": (struct(sink_frames=1e300), "sink_frames"),
    "denoising_steps not a list": (struct(denoising_steps="1000"), "denoising_steps"),
}


@pytest.mark.parametrize("options, option", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_pipeline_options_are_checked_before_the_session_starts(server, options, option):
    session = RawSession(server.stub, start(pipeline_options=options))
    error = rpc_error(session.next)  # the very first response: nothing was started
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert re.match(rf"pipeline_options: {option}(\[\d+\])? must ", error.details()), error.details()
    assert len(error.details()) < 200 and not re.search(r"\d{40}", error.details())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_plugin_params_name_the_parameter(server, value):
    policy = pb.PluginConfig(name="tokentrim", params=struct(sensitivity=value))
    error = rpc_error(RawSession(server.stub, start(cache_policy=policy)).next)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("cache_policy.params: parameter 'sensitivity' must be a finite float")
    hook = pb.PluginConfig(name="flowmo", params=struct(lr=value))
    error = rpc_error(RawSession(server.stub, start(session_hooks=[hook])).next)
    assert error.details().startswith("session_hooks[0].params: parameter 'lr' must be a finite float")


def test_server_info_publishes_json_schemas(server):
    info = server.stub.GetServerInfo(pb.GetServerInfoRequest())
    self_forcing = next(pipeline for pipeline in info.pipelines if pipeline.name == "self_forcing")
    schema = self_forcing.options_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["frames_per_block"]["type"] == "integer"
    assert schema["properties"]["warp_denoising_step"]["type"] == "boolean"
    assert schema["properties"]["timestep_shift"]["exclusiveMinimum"] == 0
    assert schema["properties"]["recache"]["enum"] == ["block_causal", "longlive"]
    assert schema["properties"]["recache"]["default"] == "block_causal"
    longlive = next(pipeline for pipeline in info.pipelines if pipeline.name == "longlive").options_schema
    assert longlive["properties"]["recache"]["default"] == "longlive"
    assert (longlive["properties"]["global_sink"]["type"], longlive["properties"]["global_sink"]["default"]) == (
        "boolean", True
    )
    tokentrim = next(policy for policy in info.cache_policies if policy.name == "tokentrim")
    prune_ratio = tokentrim.parameters_schema["properties"]["prune_ratio"]
    assert prune_ratio["type"] == "number" and prune_ratio["exclusiveMaximum"] == 1
    warmup = next(entry for entry in tokentrim.parameters if entry["name"] == "warmup")
    assert warmup["minimum"] == 0 and "0 acts as 1" in warmup["description"]  # schema and description agree


# ------------------------------------------------------------------ 2. per-chunk compute limits
def test_compute_limits_are_published_and_enforced(server):
    limits = server.stub.GetServerInfo(pb.GetServerInfoRequest()).limits
    assert (limits.max_denoising_steps, limits.max_hook_iterations) == (6, 2)
    assert limits.idle_timeout_seconds == 60
    steps = struct(denoising_steps=[1000, 900, 800, 700, 600, 500, 400])
    error = rpc_error(RawSession(server.stub, start(pipeline_options=steps)).next)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("pipeline_options: denoising_steps has 7 steps")
    assert "at most 6" in error.details()
    hook = pb.PluginConfig(name="flowmo", params=struct(iterations=3))
    error = rpc_error(RawSession(server.stub, start(session_hooks=[hook])).next)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("session_hooks[0].params:") and "at most 2" in error.details()
    within = struct(denoising_steps=[1000, 900, 800, 700, 600, 500])
    assert len(list(RawSession(server.stub, start(chunks=1, pipeline_options=within)).chunks())) == 1


# ------------------------------------------------------------------ 6. half-close keeps granted credit
@pytest.mark.parametrize("attempt", range(3))
def test_half_close_delivers_the_granted_chunks_then_ends(server, attempt):
    session = RawSession(server.stub, start(chunks=0, initial_credits=3))
    session.close_requests()
    chunks = list(session.chunks(grant=False))
    assert [chunk.index for chunk in chunks] == [0, 1, 2]
    assert session.ended is not None and session.ended.reason == pb.END_REASON_STOPPED
    assert "granted" in session.ended.message
    server.wait_idle()


# ------------------------------------------------------------------ 7. idle timeout
def test_a_session_without_credit_ends_after_the_idle_timeout(tiny_bundle):
    with ServerThread(tiny_bundle, "--idle-timeout-seconds", "0.5", "--max-sessions", "1") as server:
        session = RawSession(server.stub, start(chunks=0, initial_credits=1))
        assert session.next().WhichOneof("response") == "started"
        assert session.next().WhichOneof("response") == "chunk"
        error = rpc_error(session.next)  # no credit granted: the server ends the session
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and error.details().startswith("idle:")
        server.wait_idle(timeout=10)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
        assert 'tokentrim_sessions_ended_total{reason="idle_timeout"} 1.0' in metrics


# ------------------------------------------------------------------ 5. no filesystem path is published
def test_the_model_is_published_by_name_never_by_path(tiny_bundle, tmp_path):
    folder = tmp_path / "private-mount" / "wan-lab-model"
    with ServerThread(tiny_bundle, "--model", str(folder)) as server:
        info = server.stub.GetServerInfo(pb.GetServerInfoRequest())
        session = RawSession(server.stub, start(chunks=1))
        started = session.next().started
        assert len(list(session.chunks())) == 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
        server.wait_idle()
    assert info.model == started.model == "wan-lab-model"
    assert str(tmp_path) not in metrics and 'model="wan-lab-model"' in metrics
    assert public_model_name(load_config(["--model", str(folder), "--model-name", "lab-v2"], {})) == "lab-v2"
    assert public_model_name(load_config([], {})) == "tiny"


@pytest.mark.parametrize(
    "address, local",
    [("127.0.0.1:50051", True), ("[::1]:50051", True), ("localhost:1", True), ("0.0.0.0:50051", False),
     ("[::]:50051", False), ("10.1.2.3:50051", False), ("example.internal:50051", False)],
)
def test_loopback_addresses(address, local):
    assert is_loopback(address) is local


def test_listening_beyond_loopback_without_auth_warns(tiny_bundle, caplog):
    with caplog.at_level(logging.WARNING), ServerThread(tiny_bundle, "--listen", "0.0.0.0:0"):
        pass
    assert any("without authentication" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING), ServerThread(tiny_bundle, "--auth-tokens", "secret-token"):
        pass
    assert not any("without authentication" in record.getMessage() for record in caplog.records)
