"""The gRPC server: sessions, validation, auth, metrics (see docs/server.md)."""
