"""The fault suite (issue 15's table): one private stack for the whole session (tests/faults/stack.py), started
once and shared. A test that breaks a piece restarts it before it ends; between tests the stack is checked, and
whatever died unexpectedly is reported as that test's error and brought back for the next one.

Everything the stack runs logs under /tmp/executor-faults-*/logs (kept); a failing test's report ends with the
tail of each log, and the session's summary lists the recovery times measured.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .counter import RunCounter
from .ledger import Ledger
from .stack import Stack, missing_tools
from .web import Web

_stack: Stack | None = None  # for the failure report hook


@dataclass
class Recovery:
    """Recovery times measured by the tests, printed at the end of the session and kept in logs/recovery.txt."""

    path: Path
    lines: list[str] = field(default_factory=list)

    def record(self, what: str, seconds: float, target: str) -> None:
        line = f"{what}: {seconds:.1f} s (target {target})"
        self.lines.append(line)
        with open(self.path, "a") as out:
            out.write(line + "\n")


_recovery: Recovery | None = None


@pytest.fixture(scope="session")
def stack_dir():
    root = Path(tempfile.mkdtemp(prefix="executor-faults-"))
    root.chmod(0o755)  # PostgreSQL runs as its own OS user and needs to reach its directories in here
    yield root
    # Logs stay for reading; databases, queues and workspaces go.
    for name in ("pgdata", "pgsock", "redis", "work", "static", "data"):
        shutil.rmtree(root / name, ignore_errors=True)


@pytest.fixture(scope="session")
def counter(stack_dir):
    counter = RunCounter(stack_dir / "runs.jsonl")
    counter.start()
    yield counter
    counter.stop()


@pytest.fixture(scope="session")
def stack(stack_dir, counter):
    global _stack, _recovery
    missing = missing_tools()
    if missing:
        pytest.skip(f"the fault suite needs {', '.join(missing)}")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("the fault suite runs PostgreSQL as the postgres OS user through runuser")
    stack = Stack(stack_dir)
    _stack, _recovery = stack, Recovery(stack.logs / "recovery.txt")
    try:
        stack.start(counter.port)
        yield stack
    finally:
        stack.stop()
        _stack = None


@pytest.fixture(scope="session")
def ledger(stack):
    ledger = Ledger(stack.pg.url())
    yield ledger
    ledger.close()


@pytest.fixture
def web(stack):
    seeded = stack.seeded
    return Web(stack.base_url, seeded["api_key"], seeded["admin_user"], seeded["admin_password"])


@pytest.fixture
def recovery(stack):
    return _recovery


@pytest.fixture(autouse=True)
def healthy_stack(stack):
    """Each test starts on a whole stack, and one that leaves a process dead (not restarted) fails saying which."""
    stack.revive()
    yield
    dead = stack.dead()
    if dead:
        stack.revive()
        pytest.fail(f"died during the test and not restarted: {', '.join(dead)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _stack is not None:
        report.sections.append(("fault stack logs", _stack.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter):
    if _recovery is not None and _recovery.lines:
        terminalreporter.section("fault suite: recovery times measured")
        for line in _recovery.lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(logs: {_recovery.path.parent})")
