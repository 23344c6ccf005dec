"""Step handlers: how a file of a given kind is run, one module per kind. A kind with no handler makes its step
`unprocessed`.

A handler module knows everything about its kind of step, and the step loop (workers/steps.py) nothing:

- FX_ADAPTER: whether its steps talk to the FX adapter (workers/fx_bridge.py), which is then given the package's
  state before the step and carries out its requests after it.
- network(package): whether its steps get the network.
- prepare(context): what its steps need beyond the StepRun (StepRun.options), read before the process starts and
  outside the step's error handling, so a database outage there fails the run as it would anywhere else.
- run(step): start the step's process (handlers/process.py) and return its result.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from packages.models import Package, ScriptKind
from workers.sandbox import Isolation, ProcessResult
from workers.workspace import Workspace

from . import python, sql

if TYPE_CHECKING:
    from workers.steps import RunContext


@dataclass(frozen=True)
class Supervision:
    """How a step's process is watched, the same for every kind (workers/sandbox.py run_process applies it)."""

    timeout_seconds: float
    output_cap_bytes: int
    cancel: threading.Event  # set: stop the step now
    on_progress: Callable[[str, str], None] | None = None  # receives (stdout, stderr) so far, for live output
    on_tick: Callable[[], None] | None = None  # called about every 0.1 s while the step runs
    isolation: Isolation | None = None  # None: EXECUTOR_SANDBOX=off


@dataclass(frozen=True)
class StepRun:
    """One step as its handler gets it: what to run, what its handler prepared, and how it is watched."""

    file_name: str
    workspace: Workspace  # package_dir is the working directory; private_dir gets the step's private files
    payload: dict  # argv[1]
    env: dict[str, str]  # the executor's variables: no secrets (they are on the sandbox's command line)
    interpreter: str
    options: dict  # the handler's own, from its prepare()
    supervision: Supervision


class Handler(Protocol):
    """What a handler module provides (see the module's docstring)."""

    FX_ADAPTER: bool

    def network(self, package: Package) -> bool: ...

    def prepare(self, context: "RunContext") -> dict: ...

    def run(self, step: StepRun) -> ProcessResult: ...


_HANDLERS: dict[ScriptKind, ModuleType] = {ScriptKind.PYTHON: python, ScriptKind.SQL: sql}


def handler_for(kind: ScriptKind) -> Handler | None:
    return _HANDLERS.get(kind)
