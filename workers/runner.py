"""The step loop: claim an execution, run its pending steps in order, and close it in the ledger.

One execution, here: claimed, what it needs read, its workspace built, its steps run one after the other (one
step, from its handler to its recorded outcome: workers/steps.py), then closed: finished, handed back to the queue
at a shutdown, or failed after an error outside any step. Every status change is a transition of
executions/transitions.py, made under the run's lease (workers/lease.py).

A database blink costs no run: the claim and the reads before the first step are retried while PostgreSQL is
unreachable, the ledger writes retry (workers/lease.py), a running step goes on (ExecutionWatch), and live
output is skipped until the database is back.
"""

import dataclasses
import logging
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from executions import queueing, transitions
from executions.lifecycle import Lifecycle
from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus
from executions.services import enqueue
from executor_project import database
from packages.encryption import EncryptionError
from packages.models import Package, secrets_for, validate_env_var_name

from . import fx_bridge, shutdown, warm
from .isolation import give_to_step_uid, sandbox_enabled, step_uid
from .lease import ExecutionWatch, Lease, LeaseLost, claim, new_token
from .steps import RunContext, run_step
from .workspace import Workspace, add_run_files, base_environment, create_workspace
from .workspace_sweep import directory_prefix
from .workspace_trash import workspace_root

logger = logging.getLogger(__name__)


def run_execution(execution_id: str, worker_name: str) -> None:
    """Claim the execution and run it; a message for an execution someone else owns is dropped. While the database
    is unreachable the claim is tried again for EXECUTOR_DATABASE_WAIT_SECONDS; after that its error propagates
    (workers/tasks.py hands the message back to Redis)."""
    token = new_token()
    lease = database.retrying(
        lambda: claim(execution_id, worker_name, token),
        seconds=settings.EXECUTOR_DATABASE_WAIT_SECONDS,
        what=f"execution {execution_id}: claim",
    )
    if lease is None:
        logger.info("execution %s is not pending (already claimed, finished or gone): nothing to do", execution_id)
        return
    queueing.forget(execution_id)  # no longer waiting in a queue (executions/queueing.py)
    try:
        _run_claimed(lease)
    except LeaseLost:
        logger.warning("execution %s: lease lost, another worker owns it now; stopping", execution_id)
    except EncryptionError as exc:
        logger.error("execution %s: %s", execution_id, exc)
        _fail_unfinished(lease, f"failed: {exc}")
    except database.UNREACHABLE as exc:
        logger.error("execution %s: the database was unreachable: %s", execution_id, database.describe(exc))
        _fail_unfinished(lease, "failed: the database was unreachable")
    except Exception as exc:
        logger.exception("execution %s: internal error", execution_id)
        # Outside any step the secrets to mask are unknown, so the message is not shown (the log has it).
        _fail_unfinished(lease, f"failed: internal error in the worker ({type(exc).__name__})")


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """What a run reads from the ledger before its first step."""

    execution: Execution
    steps: list[ExecutionStep]
    lifecycle: Lifecycle
    files: dict[str, bytes]
    commit: str
    secrets: dict[str, str]
    run_files: dict[str, bytes]
    package_env: dict[str, str]


def _load(lease: Lease) -> _Loaded:
    execution = Execution.objects.select_related("package", "trigger_event").get(pk=lease.execution_id)
    files, commit = _code_snapshot(execution.package)
    return _Loaded(
        execution=execution,
        steps=list(execution.steps.order_by("position")),
        lifecycle=Lifecycle(execution),
        files=files,
        commit=commit,
        secrets=secrets_for(execution.package),
        run_files={file.path: bytes(file.content) for file in execution.files.all()},
        package_env=_package_environment(execution),
    )


def _run_claimed(lease: Lease) -> None:
    # Only reads: safe to repeat through a database blink.
    seconds, what = settings.EXECUTOR_DATABASE_OUTAGE_SECONDS, f"execution {lease.execution_id}: start"
    loaded = database.retrying(lambda: _load(lease), seconds=seconds, what=what)
    execution, steps, lifecycle, files = loaded.execution, loaded.steps, loaded.lifecycle, loaded.files
    if all(step.status == StepStatus.PENDING for step in steps):  # not a run handed over half-way
        lifecycle.started()
    if loaded.commit:
        lease.update_execution(source_commit=loaded.commit)
    with workspace_root(directory_prefix(lease), warm.workspace_parent()) as root:
        warm.share_with_server(root)
        workspace = create_workspace(root, files)
        add_run_files(workspace, loaded.run_files)
        env = _environment(workspace, execution, files)
        uid = step_uid() if sandbox_enabled() else None
        give_to_step_uid(workspace.step_dirs, uid)
        watch = ExecutionWatch(lease, read=execution)
        context = RunContext(execution, workspace, uid, watch, lifecycle, files, env, loaded.package_env,
                             loaded.secrets)  # fmt: skip
        handed_over = _run_steps(lease, context, steps)
    if handed_over:
        _hand_over(lease, execution)
    else:
        lifecycle.finished(_finish(lease, execution, steps, watch))


def _code_snapshot(package) -> tuple[dict[str, bytes], str]:
    """The package's files and the Git commit they came from, read by one statement, which sees one snapshot of the
    database: a sync landing meanwhile (packages/git_sync.py) changes both or neither. The run then works on its
    own copy until it ends."""
    rows = list(package.scripts.values_list("file_name", "content", "package__source_commit"))
    if not rows:
        return {}, Package.objects.filter(pk=package.pk).values_list("source_commit", flat=True).get()
    return {file_name: bytes(content) for file_name, content, _ in rows}, rows[0][2]


def _hand_over(lease: Lease, execution: Execution) -> None:
    """This worker is shutting down: the run goes back to the queue with its remaining steps (workers/shutdown.py);
    the next worker to claim it continues where this one stopped."""
    lease.apply(transitions.hand_back, f"handed over by {execution.worker_name}, which is shutting down")
    enqueue(execution)
    logger.warning("execution %s handed over to another worker: this one is shutting down", execution.id)


def _finish(lease: Lease, execution: Execution, steps: list[ExecutionStep], watch: ExecutionWatch) -> ExecutionStatus:
    """Close the execution from its steps' final statuses (set on the step objects by _run_steps), or as cancelled
    when someone asked for it, even after its last step: the first write assumes nobody did (no read before it),
    and changes nothing if someone did."""
    now = timezone.now()
    if watch.stop_reason != "cancel":
        status, reason = _outcome(steps, watch)
        if lease.applied(transitions.finish, status, reason, now, unless_cancel_requested=True):
            logger.info("execution %s finished", execution.id)
            return status
    lease.read(lambda: execution.refresh_from_db(fields=["cancel_requested_at", "cancel_requested_by"]))
    if not execution.cancel_requested_at:
        raise LeaseLost(lease.execution_id)  # the write above changed nothing, and not for a Cancel
    lease.apply(transitions.finish, ExecutionStatus.CANCELLED, execution.cancelled_reason, now)
    logger.info("execution %s cancelled", execution.id)
    return ExecutionStatus.CANCELLED


def _outcome(steps: list[ExecutionStep], watch: ExecutionWatch) -> tuple[ExecutionStatus, str]:
    failed = [step for step in steps if step.status == StepStatus.FAILED]
    if watch.stop_reason == "database":
        return ExecutionStatus.FAILED, watch.database_reason
    if failed:
        names = ", ".join(f"{step.position} ({step.file_name})" for step in failed)
        return ExecutionStatus.FAILED, f"failed: {'step' if len(failed) == 1 else 'steps'} {names} failed"
    return ExecutionStatus.COMPLETED, ""


def _run_steps(lease: Lease, context: RunContext, steps: list[ExecutionStep]) -> bool:
    """Run the pending steps in order, leaving each one's final status on it. After a failure the rest are
    skipped unless the package continues after failed steps; after a cancel they are always skipped.
    True when the worker is shutting down and the steps still to run are left for another worker."""
    skip_reason = ""
    for step in steps:
        if step.status != StepStatus.PENDING:
            continue  # it ran on the worker that handed this execution over
        if not skip_reason and shutdown.requested():
            return True
        context.watch.tick()
        if not skip_reason and context.watch.stop_reason == "cancel":
            skip_reason = "skipped: execution cancelled"
        if skip_reason:
            lease.apply(transitions.skip_step, step.id, skip_reason)
            step.status = StepStatus.SKIPPED
        else:
            step.status = run_step(lease, context, step)
            if step.status == StepStatus.PENDING:
                return True  # cut off by the shutdown, to run again on another worker
            context.lifecycle.script_processed(step)
            if step.status == StepStatus.CANCELLED:
                skip_reason = "skipped: execution cancelled"
            elif context.watch.stop_reason == "database":
                skip_reason = "skipped: the database was unreachable"
            elif step.status == StepStatus.FAILED and not context.execution.package.continue_on_failure:
                skip_reason = "skipped: earlier step failed"
    return False


def _environment(workspace: Workspace, execution: Execution, files: dict[str, bytes]) -> dict[str, str]:
    """The executor's variables for every step: paths, the FX adapter's, the time zone. Nothing secret: they
    are on the sandbox's command line."""
    env = base_environment(workspace, Path(settings.EXECUTOR_SCRIPT_PYTHON).parent)
    env.update(fx_bridge.prepare(workspace, execution.package.package_name, files.get("config.json")))
    env["TZ"] = str(execution.package.timezone)  # local time in scripts = the schedule's; later runs read it so
    return env


def _package_environment(execution: Execution) -> dict[str, str]:
    """The package's variables. Names are checked when saved; one stored before a name was forbidden (LD_PRELOAD,
    PYTHONPATH, ...) is left out here too."""
    env = {}
    for variable in execution.package.environment_variables.all():
        try:
            validate_env_var_name(variable.name)
        except ValidationError:
            logger.warning("execution %s: environment variable %s left out: not allowed", execution.id, variable.name)
            continue
        env[variable.name] = variable.value
    return env


def _fail_unfinished(lease: Lease, reason: str) -> None:
    """After an error outside any step: the running step (if any) fails with `reason`, the steps after it are
    skipped, and the execution fails, so nothing stays in progress (retried through a database blink; should
    the database stay away, the heartbeat or the reaper resolves the execution later)."""
    try:
        lease.apply(transitions.fail_unfinished, reason)
    except LeaseLost:
        pass
    except Exception:
        logger.exception("execution %s: could not record the error", lease.execution_id)
