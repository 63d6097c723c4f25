"""The one exception type the client raises for failed calls."""

from __future__ import annotations

import grpc


class ClientError(Exception):
    """A call failed: the gRPC status code and the server's message (or the client's, for protocol errors).

    ``attempts`` counts the tries made, retries included, so callers can tell a retried failure from a first one.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, attempts: int = 1) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.attempts = attempts

    @property
    def message(self) -> str:
        """The server's message; the same as ``details``."""
        return self.details

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, *, attempts: int = 1) -> ClientError:
        """Wrap an error raised by a grpc call, keeping its code and details."""
        if isinstance(error, grpc.Call):
            return cls(error.code(), error.details() or "", attempts=attempts)
        return cls(grpc.StatusCode.UNKNOWN, str(error), attempts=attempts)  # a bare RpcError carries no status


def protocol_error(details: str) -> ClientError:
    """The server broke the API's message order; INTERNAL because no server status describes it."""
    return ClientError(grpc.StatusCode.INTERNAL, f"protocol error: {details}")
