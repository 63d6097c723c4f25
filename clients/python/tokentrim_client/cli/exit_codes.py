"""The CLI's exit codes (documented in docs/client.md and in ``--help``)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # done; for `health`: the server is SERVING
    FAILED = 1  # the call failed or output could not be written; `health`: not SERVING or unreachable
    USAGE = 2  # bad flags or unreadable token / certificate files (argparse's own code)
    INTERRUPTED = 130  # Ctrl-C: the session was stopped (or dropped) and what arrived was kept; 128 + SIGINT


EPILOG = """exit codes:
  0    done (health: SERVING)
  1    the call failed: the gRPC code and the server's message are printed; output could not be
       written (health: not SERVING or unreachable)
  2    usage error: bad flags, unreadable token or certificate file, missing output folder
  130  interrupted with Ctrl-C: the session was stopped and what arrived was kept (a valid mp4)"""
