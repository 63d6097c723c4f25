"""Server faults as clients see them: an error id in the status, the details in the log under that id.

A status never carries an exception's class or text (they can hold paths, tensor shapes or library internals,
and a client that triggers them at will could fill the log): the client gets ``what failed (error id ID)``
and the server logs the traceback once, under the same id, for the operator to find.
"""

from __future__ import annotations

import logging
import uuid


def new_error_id() -> str:
    """A short random id, unique enough to grep one fault out of a server's log."""
    return uuid.uuid4().hex[:12]


def log_fault(log: logging.Logger, what: str, *, traceback: bool = True) -> str:
    """Log the exception being handled as ``what`` under a new error id; returns the client's message.

    Call from an ``except`` block. ``traceback=False`` logs one line (for faults a client can cause at will,
    where the stack says nothing new).
    """
    error_id = new_error_id()
    if traceback:
        log.exception("%s (error id %s)", what, error_id)
    else:
        log.warning("%s (error id %s)", what, error_id)
    return f"{what} (error id {error_id}; the server's log has the details)"
