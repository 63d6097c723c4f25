"""Sessions whose call dropped without ``stop``, held for a resume: tokens, caller identity, expiry.

A held session keeps its admission slot and reservation (it counts against the limits until it resumes or
expires) and its state, parked off the accelerator by the engine. A resume must present the token the
session was started with *and* come from the same credentials (bearer token, client certificate); anything
else is indistinguishable from an unknown token, so a token leaked to another caller reveals nothing.

A client often sees its connection fail before the server does (the server learns of a dead peer from
keepalive, tens of seconds later). A resume that finds its session still attached to the old call ends that
call, which holds the session, and takes it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tokentrim_server.server.metrics import ServerMetrics
from tokentrim_server.server.session import ServedSession

log = logging.getLogger(__name__)


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)


def caller_identity(context: grpc.aio.ServicerContext) -> str:
    """A digest of the caller's credentials: its bearer token and its client certificate's identity, if any."""
    metadata = dict(context.invocation_metadata() or ())
    authorization = metadata.get("authorization", "")
    peer = context.auth_context().get("x509_pem_cert", [])
    material = "\0".join([authorization, *(item.decode(errors="replace") for item in _as_list(peer))])
    return hashlib.sha256(material.encode()).hexdigest()


def _as_list(values: Sequence[bytes] | bytes) -> Sequence[bytes]:
    return [values] if isinstance(values, bytes) else values


TAKEOVER_SECONDS = 5.0  # how long a resume waits for the session's old call to let go


@dataclass
class HeldSession:
    session: ServedSession
    identity: str
    expiry: asyncio.TimerHandle


@dataclass
class AttachedSession:
    session: ServedSession
    identity: str
    call: asyncio.Task  # the task serving the session's current call


class HeldSessions:
    """The sessions held by one server; ``hold_seconds`` 0 holds none."""

    def __init__(self, hold_seconds: float, metrics: ServerMetrics) -> None:
        self.hold_seconds = hold_seconds
        self.metrics = metrics
        self._held: dict[str, HeldSession] = {}
        self._attached: dict[str, AttachedSession] = {}

    @property
    def enabled(self) -> bool:
        return self.hold_seconds > 0

    def __len__(self) -> int:
        return len(self._held)

    def attach(self, session: ServedSession, identity: str) -> None:
        """``session`` is being served by the current task's call (so that a resume can take it over)."""
        if session.resume_token:
            self._attached[session.resume_token] = AttachedSession(session, identity, asyncio.current_task())

    def detach(self, session: ServedSession) -> None:
        self._attached.pop(session.resume_token, None)

    def hold(self, session: ServedSession, identity: str) -> None:
        """Park ``session`` under its resume token until it is taken or ``hold_seconds`` pass."""
        session.hold()
        loop = asyncio.get_running_loop()
        token = session.resume_token
        expiry = loop.call_later(self.hold_seconds, self._expire, token)
        self._held[token] = HeldSession(session, identity, expiry)
        self.metrics.sessions_held.set(len(self._held))
        log.info("session %s held for %g s after its call dropped", session.session_id, self.hold_seconds)

    async def take(self, token: str, identity: str) -> ServedSession | None:
        """The held session of ``token`` if ``identity`` started it (else ``None``, and it stays where it is).

        A session still attached to a call (whose client has already gone) is taken over: that call ends.
        """
        attached = self._attached.get(token)
        if attached is not None and hmac.compare_digest(attached.identity, identity):
            attached.session.taken_over = True  # its call ends with ABORTED, not as a dropped call
            attached.call.cancel()
            deadline = asyncio.get_running_loop().time() + TAKEOVER_SECONDS
            while token not in self._held and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        held = self._held.get(token)
        if held is None or not hmac.compare_digest(held.identity, identity):
            return None
        del self._held[token]
        held.expiry.cancel()
        self.metrics.sessions_held.set(len(self._held))
        return held.session

    def release_all(self) -> None:
        """End every held session now (the server is shutting down: nobody can resume them here)."""
        for token in list(self._held):
            self._expire(token)

    def _expire(self, token: str) -> None:
        held = self._held.pop(token, None)
        if held is None:
            return
        held.expiry.cancel()
        self.metrics.sessions_held.set(len(self._held))
        self.metrics.sessions_ended.labels("expired").inc()
        log.info("session %s was not resumed; freed", held.session.session_id)
        held.session.finish()
