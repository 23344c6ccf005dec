"""What every fault test asserts in the end: 0 lost (each accepted execution reached a final state), 0 duplicated
steps (the counter saw each step start at most once, exactly once for a completed one), and the truth told."""

import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta

from .counter import RunCounter
from .ledger import Ledger, Run, all_final
from .web import Answer, Web

SLEEP = "faults.sleep"  # one execution of faults_sleeper; data: fault tag, seconds
BURST = "faults.burst"  # one execution each of faults_burst_a and faults_burst_b
DONE = {"completed", "unprocessed"}


def new_tag(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def start(web: Web, tag: str, seconds: float, count: int = 1) -> list[str]:
    """Post `count` events each starting a step of `seconds`; the ids of the executions they started."""
    ids = []
    for _ in range(count):
        answer = web.post_event(SLEEP, {"fault": tag, "seconds": seconds})
        assert answer.status == 202, f"event not accepted: {answer}"
        ids += answer.execution_ids()
    return ids


def wait_all_done(ledger: Ledger, web: Web, tag: str, timeout: float) -> list[Run]:
    """Every execution the API accepted for `tag` (and any other it recorded) in a final state, within `timeout`."""
    accepted = web.accepted_ids(tag)

    def done(runs: list[Run]) -> bool:
        return accepted <= {run.id for run in runs} and all_final(runs)

    return ledger.wait(lambda: ledger.tagged(tag), done, timeout, f"all {len(accepted)} accepted executions final")


def assert_completed_once(runs: list[Run], counter: RunCounter) -> None:
    # manifest.json is kept with the package's files and shows as an `unprocessed` step: nothing runs it.
    problems = [f"not completed: {run}" for run in runs
                if run.status != "completed" or any(step.status not in DONE for step in run.steps)]  # fmt: skip
    problems += duplicated(runs, counter)
    problems += [f"its step did not run to its end once: {run}" for run in runs if counter.ends(run.id) != 1]
    assert not problems, "\n".join(problems)


def duplicated(runs: list[Run], counter: RunCounter) -> list[str]:
    return [f"step started {counter.starts(run.id)} times: {run}" for run in runs if counter.starts(run.id) > 1]


def assert_no_web_problems(web: Web) -> None:
    problems = web.problems()
    assert not problems, "\n".join(problems)


@contextlib.contextmanager
def noted(failures: list[str]):
    """An assertion block whose failure is noted while the test goes on, to fail at its end with all of them: for a
    test whose checks are independent (a database outage's answers and its runs), so one does not hide another."""
    try:
        yield
    except AssertionError as exc:
        failures.append(str(exc))


def says_pending(answer: Answer) -> bool:
    """The truth when the broker refused the messages: each run recorded as pending and not queued (`runs`, see
    executions/api.py), never "queued" or started."""
    body = answer.json()
    runs = body.get("runs") or [item for item in body.get("executions", []) if isinstance(item, dict)]
    if not runs:
        return body.get("status") == "pending"
    return all(run.get("status") == "pending" and run.get("queued") is False for run in runs)


def step_started_at(run: Run) -> float:
    """Wall-clock seconds when its step started (a worker claimed the execution and began the step)."""
    return min(datetime.fromisoformat(step.started_at).timestamp() for step in run.steps if step.started_at)


def next_minute(after_seconds: float) -> datetime:
    """The first whole minute (UTC) at least `after_seconds` from now: a fire time of an every-minute schedule."""
    earliest = datetime.now(UTC) + timedelta(seconds=after_seconds)
    return earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, moment.timestamp() - time.time()))
