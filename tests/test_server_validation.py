"""Every bad request gets INVALID_ARGUMENT naming the field; the server keeps serving afterwards."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from tokentrim.v1 import streaming_pb2 as pb

from tests.server_support import RawSession, ServerThread, rpc_error, start


def struct(**values) -> Struct:
    message = Struct()
    message.update(values)
    return message


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with ServerThread(tiny_bundle, "--max-prompt-chars", "50", "--max-chunks", "20") as running:
        yield running


BAD_STARTS = {
    "empty prompt": (start(prompt="  "), "prompt", "must not be empty"),
    "long prompt": (start(prompt="x" * 51), "prompt", "at most 50"),
    "seed range": (start(seed=2**64 - 1), "seed", "at most"),
    "pipeline": (start(pipeline="magic"), "pipeline", "self_forcing, rolling_forcing"),
    "unknown option": (start(pipeline_options=struct(steps=3)), "pipeline_options", "unknown"),
    "bad option value": (start(pipeline_options=struct(local_attn_frames=2)), "pipeline_options", "local_attn_frames"),
    "option type": (start(pipeline_options=struct(sink_frames="many")), "pipeline_options", ""),
    "unbounded global": (start(chunks=0, pipeline_options=struct(local_attn_frames=-1)), "pipeline_options", "local"),
    "chunks": (start(chunks=21), "chunks", "at most 20"),
    "height": (start(height=40), "height", "multiple of 16"),
    "width": (start(width=4096), "width", "at most 1280"),
    "policy": (start(cache_policy=pb.PluginConfig(name="nope")), "cache_policy.name", "tokentrim"),
    "policy param": (start(cache_policy=pb.PluginConfig(name="tokentrim", params=struct(prune_ratio=2))),
                     "cache_policy.params", "prune_ratio"),
    "policy param name": (start(cache_policy=pb.PluginConfig(name="tokentrim", params=struct(ratio=0.1))),
                          "cache_policy.params", "ratio"),
    "int param given a fraction": (start(cache_policy=pb.PluginConfig(name="tokentrim", params=struct(warmup=1.5))),
                                   "cache_policy.params", "warmup"),
    "hook": (start(session_hooks=[pb.PluginConfig(name="nope")]), "session_hooks[0].name", "nope"),
    "hook repeated": (start(session_hooks=[pb.PluginConfig(name="flowmo"), pb.PluginConfig(name="flowmo")]),
                      "session_hooks", "repeated"),
    "jpeg quality": (start(output=pb.OutputFormat(jpeg_quality=101)), "output.jpeg_quality", "[1, 100]"),
    "encoding": (start(output=pb.OutputFormat(encoding=9)), "output.encoding", "ENCODING_JPEG"),
    "credits": (start(initial_credits=17), "initial_credits", "at most 16"),
    "policy stage the pipeline cannot run": (
        start(pipeline="rolling_forcing", cache_policy=pb.PluginConfig(name="tokentrim")), "session", "final"),
}


@pytest.mark.parametrize("request_, field, hint", BAD_STARTS.values(), ids=BAD_STARTS.keys())
def test_bad_start_is_invalid_argument_naming_the_field(server, request_, field, hint):
    error = rpc_error(lambda: RawSession(server.stub, request_).next())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:"), error.details()
    assert hint in error.details()
    server.wait_idle()


def test_first_message_must_be_start(server):
    first = pb.GenerateRequest(grant_credits=pb.GrantCredits(chunks=1))
    error = rpc_error(lambda: RawSession(server.stub, first=first).next())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("start:")


def test_bad_message_mid_session_ends_it_with_the_field(server):
    session = RawSession(server.stub, start(chunks=5, initial_credits=1))
    session.next()
    session.send(change_prompt=pb.ChangePrompt(prompt=""))
    error = rpc_error(lambda: list(session.call))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("change_prompt.prompt:")
    second = RawSession(server.stub, start(chunks=5, initial_credits=1))
    second.next()
    second.send(start=start())
    error = rpc_error(lambda: list(second.call))
    assert error.details().startswith("start:")
    server.wait_idle()


def test_oversized_message_is_refused(tiny_bundle):
    with ServerThread(tiny_bundle, "--max-message-bytes", "1000", "--max-prompt-chars", "100000") as server:
        error = rpc_error(lambda: RawSession(server.stub, start(prompt="x" * 5000)).next())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # and the server still serves
        assert len(list(RawSession(server.stub, start(chunks=1)).chunks())) == 1
