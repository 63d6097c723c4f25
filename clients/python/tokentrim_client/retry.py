"""Exponential backoff with jitter for the calls that may be repeated safely.

Only a call that has not delivered anything yet can be repeated: unary calls, and a session until the server
admits it. Once chunks flow, a dropped session is resumed instead (tokentrim_client.session), not repeated.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from tokentrim_client.errors import ClientError

T = TypeVar("T")

log = logging.getLogger(__name__)

# The codes that mean "not now" rather than "not this": a draining or restarting server, or a full one.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a call that failed with one of ``codes``.

    The n-th retry (from 0) waits ``min(max_backoff, initial_backoff * multiplier**n)`` seconds, less a random
    share of up to ``jitter`` of it, so that many clients turned away together do not come back together.
    """

    retries: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    codes: frozenset[grpc.StatusCode] = field(default=RETRYABLE_CODES)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (from 0)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        draw = (rng or random).random()
        return ceiling * (1.0 - self.jitter * draw)


NO_RETRIES = RetryPolicy(retries=0)


async def call_with_retries(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str) -> T:
    """Run ``attempt`` until it succeeds, its error is not retryable, or the retries are used up.

    Every failure leaves as ``ClientError``; ``what`` names the call in the log lines about retries.
    """
    retry = 0
    while True:
        try:
            return await attempt()
        except grpc.RpcError as rpc_error:
            error = ClientError.from_rpc_error(rpc_error, attempts=retry + 1)
            if error.code not in policy.codes or retry >= policy.retries:
                raise error from rpc_error
            delay = policy.delay(retry)
            log.warning("%s failed with %s; retry %d of %d in %.2f s", what, error, retry + 1, policy.retries, delay)
            retry += 1
            await asyncio.sleep(delay)
