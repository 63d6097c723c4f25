"""Sessions survive a dropped call: held, resumed with their token, the video bit-identical (issue #19)."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from tokentrim.v1 import streaming_pb2 as pb

from tests.server_support import RawSession, ServerThread, rpc_error, start

CHUNKS = 6
RAW = pb.OutputFormat(encoding=pb.ENCODING_RAW_RGB)  # exact bytes: any difference shows


def session_start(**fields) -> pb.StartSession:
    return start(**{"chunks": CHUNKS, "seed": 11, "output": RAW, **fields})


def resume_request(token: str, last: int | None, credits: int = 2) -> pb.GenerateRequest:
    resume = pb.ResumeSession(token=token, initial_credits=credits)
    if last is not None:
        resume.last_chunk_index = last
    return pb.GenerateRequest(resume=resume)


def wait_held(server: ServerThread, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.service.holds) != count:
        assert time.monotonic() < deadline, f"{len(server.service.holds)} sessions held, expected {count}"
        time.sleep(0.01)


def take_chunks(session: RawSession, count: int) -> list[pb.Chunk]:
    """``count`` chunks, granting a credit for each (the rest of the stream is left unread)."""
    chunks = []
    while len(chunks) < count:
        response = session.next()
        if response.WhichOneof("response") == "chunk":
            chunks.append(response.chunk)
            session.grant()
    return chunks


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with ServerThread(tiny_bundle, "--resume-hold-seconds", "30", "--max-credits", "4") as running:
        yield running


@pytest.fixture(scope="module")
def uninterrupted(server) -> list[pb.Chunk]:
    session = RawSession(server.stub, session_start())
    session.next()
    chunks = list(session.chunks())
    server.wait_idle()
    return chunks


@pytest.mark.parametrize("received", [0, 1, 3, 5])
def test_a_resumed_session_is_bit_identical_to_an_uninterrupted_one(server, uninterrupted, received):
    first = RawSession(server.stub, session_start())
    started = first.next().started
    assert started.resume_token and not started.resumed
    before = take_chunks(first, received)
    first.call.cancel()  # the connection drops
    wait_held(server)

    last = before[-1].index if before else None
    second = RawSession(server.stub, first=resume_request(started.resume_token, last))
    again = second.next().started
    assert again.resumed and again.session_id == started.session_id
    after = list(second.chunks())
    assert second.ended is not None and second.ended.reason == pb.END_REASON_COMPLETED
    video = before + after
    assert [chunk.index for chunk in video] == list(range(CHUNKS))  # no gap, no duplicate
    assert [chunk.rgb for chunk in video] == [chunk.rgb for chunk in uninterrupted]
    assert [chunk.first_frame for chunk in video] == [chunk.first_frame for chunk in uninterrupted]
    server.wait_idle()


def test_a_resume_takes_over_a_call_the_server_still_thinks_alive(server, uninterrupted):
    """The client saw its connection fail first: the resume ends the old call and carries on."""
    first = RawSession(server.stub, session_start())
    token = first.next().started.resume_token
    before = take_chunks(first, 2)
    second = RawSession(server.stub, first=resume_request(token, before[-1].index))  # the old call still open
    assert second.next().started.resumed
    video = before + list(second.chunks())
    assert [chunk.rgb for chunk in video] == [chunk.rgb for chunk in uninterrupted]
    assert rpc_error(lambda: list(first.call)).code() == grpc.StatusCode.ABORTED  # told, should it still listen
    server.wait_idle()


def test_unknown_tokens_and_bad_replays_are_refused(server):
    error = rpc_error(RawSession(server.stub, first=resume_request("no-such-token", None)).next)
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("resume.token:")

    first = RawSession(server.stub, session_start(chunks=0, initial_credits=4))
    token = first.next().started.resume_token
    take_chunks(first, 6)  # the server keeps the last max_credits (4) chunks handed out, and at most 4 more
    first.call.cancel()
    wait_held(server)
    error = rpc_error(RawSession(server.stub, first=resume_request(token, 0)).next)
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and error.details().startswith("resume.last_chunk_index:")
    server.wait_idle()  # a failed replay ends the session
    error = rpc_error(RawSession(server.stub, first=resume_request(token, 5)).next)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_a_token_works_only_with_the_credentials_that_started_the_session(tiny_bundle):
    flags = ("--resume-hold-seconds", "30", "--auth-tokens", "alice-token", "--auth-tokens", "bob-token")
    alice, bob = (("authorization", "Bearer alice-token"),), (("authorization", "Bearer bob-token"),)
    with ServerThread(tiny_bundle, *flags) as server:
        first = RawSession(server.stub, session_start(), metadata=alice)
        token = first.next().started.resume_token
        first.call.cancel()
        wait_held(server)
        error = rpc_error(RawSession(server.stub, first=resume_request(token, None), metadata=bob).next)
        assert error.code() == grpc.StatusCode.NOT_FOUND  # indistinguishable from an unknown token
        resumed = RawSession(server.stub, first=resume_request(token, None), metadata=alice)
        assert resumed.next().started.resumed
        assert len(list(resumed.chunks())) == CHUNKS
        server.wait_idle()


def test_held_sessions_count_against_the_limits_and_expire(tiny_bundle):
    with ServerThread(tiny_bundle, "--resume-hold-seconds", "1", "--max-sessions", "1") as server:
        first = RawSession(server.stub, session_start(chunks=0))
        token = first.next().started.resume_token
        first.call.cancel()
        wait_held(server)
        error = rpc_error(RawSession(server.stub, session_start()).next)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the held session keeps its slot
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
        assert "tokentrim_sessions_held 1.0" in metrics
        server.wait_idle(timeout=10)  # expired after 1 s: everything freed
        assert len(server.service.holds) == 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
        assert 'tokentrim_sessions_ended_total{reason="expired"} 1.0' in metrics
        assert "tokentrim_sessions_held 0.0" in metrics
        assert rpc_error(RawSession(server.stub, first=resume_request(token, None)).next).code() == (
            grpc.StatusCode.NOT_FOUND
        )


def test_stopped_sessions_are_not_held(server):
    session = RawSession(server.stub, session_start(chunks=0))
    session.next()
    session.send(stop=pb.StopSession())
    list(session.chunks(grant=False))
    server.wait_idle()
    assert len(server.service.holds) == 0
