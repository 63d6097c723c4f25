"""Channel and call settings: TLS, bearer-token metadata and message-size limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# A raw-RGB chunk is frames x height x width x 3 bytes (tens of MiB at large sizes), far past gRPC's 4 MiB
# default; the server bounds what it sends, so the client only needs a ceiling that no valid chunk reaches.
MAX_RECEIVE_BYTES = 512 * 1024 * 1024

Certificates = bytes | str | os.PathLike[str]


def load_pem(value: Certificates | None) -> bytes | None:
    """PEM data given as bytes or as the path of a file holding it."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class ChannelSettings:
    """How to reach the server. Any certificate, or ``tls``, makes the channel secure (``tls`` alone trusts the
    system's roots); a client certificate and key, for servers that require mutual TLS, go together."""

    target: str
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    tls: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key must be given together")

    @property
    def secure(self) -> bool:
        return self.tls or self.root_certificates is not None or self.client_certificate is not None

    def open(self) -> grpc.Channel:
        """A channel of grpc's threaded API, not grpc.aio: see tokentrim_client.transport for why."""
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), *self.options]
        if not self.secure:
            return grpc.insecure_channel(self.target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )
        return grpc.secure_channel(self.target, credentials, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The per-call metadata for bearer auth.

    Sent as plain call metadata rather than call credentials because grpc only attaches call credentials to
    secure channels, and tokens over an insecure localhost channel must work too.
    """
    if token is None:
        return ()
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("the bearer token must be non-empty and contain no whitespace")
    return (("authorization", f"Bearer {token}"),)
