"""Riding out a database blink: which errors mean "unreachable", and retrying through them.

A PostgreSQL restart breaks every open connection and refuses new ones for a few seconds. Outside a web request
Django never replaces a broken connection by itself, so after such an error this thread's connection is closed
and the next query opens a new one.
"""

import itertools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)
T = TypeVar("T")

# OperationalError: refused, reset, "the database system is starting up"; InterfaceError: a connection closed under us.
UNREACHABLE = (OperationalError, InterfaceError)
# Pauses between attempts: quick at first (a fast restart takes about two seconds), then every 5 s.
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0)
MAX_BACKOFF_SECONDS = 5.0


def reset_connection() -> None:
    """Drop this thread's connection after an error, so that the next query opens a new one. Not inside a
    transaction: that must fail as a whole (its caller retries it from the start)."""
    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except Exception:  # closing a connection the server already dropped can fail too; it is gone either way
        pass


def describe(exc: BaseException) -> str:
    """The first line of a database error (the rest is libpq's hints); it names host and port, never a password."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def retrying(action: Callable[[], T], *, seconds: float, what: str) -> T:
    """action(), retried with backoff while the database is unreachable, for up to `seconds`; then its error is
    raised. Only for actions that are safe to repeat: a write whose reply was lost may have been done."""
    deadline = time.monotonic() + seconds
    for attempt in itertools.count():
        try:
            result = action()
        except UNREACHABLE as exc:
            if connection.in_atomic_block:
                raise  # the surrounding transaction is lost: only its owner can start it again
            reset_connection()
            pause = BACKOFF_SECONDS[attempt] if attempt < len(BACKOFF_SECONDS) else MAX_BACKOFF_SECONDS
            if time.monotonic() + pause > deadline:
                raise  # the caller says what happens next
            if attempt == 0:
                logger.warning("%s: the database is unreachable (%s); retrying for up to %s s", what, describe(exc),
                               seconds)  # fmt: skip
            time.sleep(pause)
            continue
        if attempt:
            logger.warning("%s: the database is reachable again", what)
        return result
    raise AssertionError("unreachable")  # (itertools.count never ends)
