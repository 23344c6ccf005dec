"""Waiting for an execution to end by polling the ledger: for `manage.py run_package --wait`, tests and the bench.

Polling, not a notification: the ledger is the only state a worker shares with the caller, and a caller that
waits is a person at a terminal or a test, for whom a fraction of a second is nothing.
"""

import time

from .models import Execution


def wait_until_finished(execution: Execution, timeout: float, poll_seconds: float = 0.2) -> Execution:
    """Block until the execution reaches a final state (for the CLI and tests); TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    execution.refresh_from_db()
    while not execution.is_finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Execution {execution.id} still {execution.status} after {timeout:g} s.")
        time.sleep(poll_seconds)
        execution.refresh_from_db()
    return execution
