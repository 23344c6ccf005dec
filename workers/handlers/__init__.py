"""Step handlers: how a file of a given kind is run. A kind with no handler makes its step `unprocessed`."""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packages.models import ScriptKind
from workers.sandbox import Isolation, ProcessResult

from . import python, sql


@dataclass(frozen=True)
class StepRun:
    """Everything a handler needs to run one step; handlers read nothing else."""

    file_name: str
    package_dir: Path
    private_dir: Path  # where the step's private files appear (workers/workspace.py)
    payload: dict  # argv[1]
    env: dict[str, str]  # the executor's variables: no secrets (they are on the sandbox's command line)
    package_env: dict[str, str]  # the package's variables, applied inside the step (handlers/python.py)
    interpreter: str
    timeout_seconds: float
    output_cap_bytes: int
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop the step now
    on_progress: Callable[[str, str], None] | None = None  # receives (stdout, stderr) so far, for live output
    on_tick: Callable[[], None] | None = None  # called about every 0.1 s while the step runs
    sql: dict = field(default_factory=dict)  # SQL steps: database_url, statement_timeout_ms, max_rows, config
    isolation: Isolation | None = None  # None: EXECUTOR_SANDBOX=off


Handler = Callable[[StepRun], ProcessResult]

_HANDLERS: dict[ScriptKind, Handler] = {ScriptKind.PYTHON: python.run, ScriptKind.SQL: sql.run}


def handler_for(kind: ScriptKind) -> Handler | None:
    return _HANDLERS.get(kind)
