"""Python client of tokentrim-server: ``AsyncClient`` (asyncio), ``Client`` (blocking) and the CLI."""

from tokentrim_client.aio import AsyncClient, SessionResult
from tokentrim_client.decoding import ReceivedChunk
from tokentrim_client.errors import ClientError
from tokentrim_client.messages import SessionOptions
from tokentrim_client.retry import NO_RETRIES, RETRYABLE_CODES, RetryPolicy
from tokentrim_client.session import AsyncSession, SessionStats
from tokentrim_client.sync import Client, Session

__all__ = [
    "NO_RETRIES",
    "RETRYABLE_CODES",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ClientError",
    "ReceivedChunk",
    "RetryPolicy",
    "Session",
    "SessionOptions",
    "SessionResult",
    "SessionStats",
]
