"""Reading the fault stack's executions straight from its PostgreSQL with psycopg2.

Not through the test process's Django: under `make test` that one is set up for another database. Every read
reconnects after an error, so a test can keep polling while it restarts the database.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg2

FINAL = frozenset({"completed", "failed", "cancelled", "skipped"})

RUNS = """
SELECT e.id::text, e.status, e.status_reason, e.worker_name, e.idempotency_key, e.params, e.created_at,
       e.started_at, e.finished_at,
       (SELECT coalesce(json_agg(json_build_object('status', s.status, 'reason', s.status_reason,
                                                   'started_at', s.started_at) ORDER BY s.position), '[]')
        FROM executions_executionstep s WHERE s.execution_id = e.id)
FROM executions_execution e WHERE {where} ORDER BY e.created_at
"""


@dataclass(frozen=True)
class Step:
    status: str
    reason: str
    started_at: str | None  # ISO time from json_agg


@dataclass(frozen=True)
class Run:
    id: str
    status: str
    reason: str
    worker_name: str
    key: str | None
    params: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: tuple[Step, ...]

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def reasons(self) -> str:
        """The execution's reason and its steps', for assertions about what a run was told."""
        return " | ".join([self.reason, *(step.reason for step in self.steps)])

    def __str__(self) -> str:
        steps = ", ".join(f"{step.status}{f' ({step.reason})' if step.reason else ''}" for step in self.steps)
        return f"{self.id[:8]} {self.status} {self.reason!r} on {self.worker_name or '-'} [{steps}]"


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection = None

    def tagged(self, tag: str) -> list[Run]:
        """The executions started by events whose data carried `"fault": tag`."""
        return self._runs("e.params->>'fault' = %s", (tag,))

    def with_key(self, key: str) -> list[Run]:
        return self._runs("e.idempotency_key = %s", (key,))

    def of_package(self, package_id: int) -> list[Run]:
        return self._runs("e.package_id = %s", (package_id,))

    def count(self, where: str) -> int:
        """How many executions match `where` (SQL over executions_execution)."""
        return self._rows(f"SELECT count(*) FROM executions_execution WHERE {where}", ())[0][0]

    def wait(self, read: Callable[[], list[Run]], until: Callable[[list[Run]], bool], timeout: float, what: str):
        """Poll `read()` until `until(runs)`; an AssertionError listing the runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            runs = read()
            if until(runs):
                return runs
            if time.monotonic() > deadline:
                listed = "\n".join(map(str, runs)) or "(none)"
                raise AssertionError(f"not {what} after {timeout:g} s:\n{listed}")
            time.sleep(0.2)

    def wait_final(self, tag: str, count: int, timeout: float) -> list[Run]:
        return self.wait(lambda: self.tagged(tag), lambda runs: len(runs) == count and all_final(runs), timeout,
                         f"{count} executions finished")  # fmt: skip

    def wait_running(self, tag: str, count: int, timeout: float = 30) -> list[Run]:
        """Until `count` of the tag's executions have a step running (a worker claimed each and started it)."""
        return self.wait(lambda: self.tagged(tag), lambda runs: len(running(runs)) >= count, timeout,
                         f"{count} steps running")  # fmt: skip

    def _runs(self, where: str, params: tuple, timeout: float = 60) -> list[Run]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return [Run(*row[:9], steps=tuple(Step(**step) for step in row[9])) for row in
                        self._rows(RUNS.format(where=where), params)]  # fmt: skip
            except psycopg2.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the database is restarting: read again once it is back

    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        try:
            if self._connection is None:
                self._connection = psycopg2.connect(self.url, connect_timeout=5)
                self._connection.autocommit = True
            with self._connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        except psycopg2.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg2.Error:
                pass
            self._connection = None


def all_final(runs: list[Run]) -> bool:
    return all(run.final for run in runs)


def running(runs: list[Run]) -> list[Run]:
    return [run for run in runs if any(step.status == "running" for step in run.steps)]
