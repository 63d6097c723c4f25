"""WebRTC gateway of tokentrim-server: a browser viewer page, live video and drift telemetry (docs/gateway.md)."""
