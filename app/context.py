"""What a request carries through its log lines: its ID, the trace it belongs to, and the
model and image count the access line reports.

:class:`app.middleware.RequestMiddleware` sets it per request; the batch engine runs a
job's work in the context of the request that submitted it, so log lines from the worker
thread carry the request's ID too. :class:`ContextFilter` puts it on every log record.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

# What a client's X-Request-ID may be (anything else is replaced): short, and nothing that
# could break a log line or a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:/+=-]{1,128}")
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; version ff is invalid,
# and an all-zero trace id means none.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass
class RequestInfo:
    request_id: str
    trace_id: str | None = None
    model: str | None = None  # set when the request reaches a model's batch engine
    images: int | None = None


current: ContextVar[RequestInfo | None] = ContextVar("mnist_serve_request", default=None)


def request_id(given: str | None) -> str:
    """The client's ``X-Request-ID`` if it is well-formed, else a new one (a random UUID, in
    hex)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    # Not uuid.uuid4(): os.urandom releases the GIL, and getting it back from a busy batch
    # worker costs the event loop up to a switch interval (5 ms) per request. An ID needs to
    # be unique, not unpredictable: the process's own generator (seeded from os.urandom
    # when each process starts) gives that.
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace


def current_request_id() -> str | None:
    info = current.get()
    return info.request_id if info is not None else None


def note_job(model: str, images: int) -> None:
    """Record, for the access line, which model the current request went to and with how
    many images."""
    info = current.get()
    if info is not None:
        info.model = model
        info.images = images


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to records logged during a request (and to
    none other, so JSON lines outside a request do not carry empty fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = current.get()
        if info is not None:
            record.request_id = info.request_id
            if info.trace_id is not None:
                record.trace_id = info.trace_id
        return True
