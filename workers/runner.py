"""The step loop: run a claimed execution's steps in order and record every outcome in the ledger.

Record first, act, then update: a step is marked `running` before its process starts and gets its result
right after, so a crash leaves a visible row, not a mystery. Secret values are masked in everything stored.

A database blink costs no run: the claim and the reads before the first step are retried while PostgreSQL is
unreachable, the ledger writes retry (workers/lease.py), a running step goes on (ExecutionWatch), and live
output is skipped until the database is back.
"""

import dataclasses
import json
import logging
import signal
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from executions import queueing
from executions.lifecycle import Lifecycle
from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus
from executions.services import enqueue
from executor_project import database
from packages.encryption import EncryptionError
from packages.models import Package, ScriptKind, kind_for_file_name, secrets_for, validate_env_var_name

from . import fx_bridge, masking, shutdown
from .handlers import StepRun, handler_for
from .handlers.errors import StepSetupError
from .isolation import (
    SandboxUnavailable,
    check_sandbox,
    give_to_step_uid,
    isolation_for,
    sandbox_enabled,
    step_uid,
)
from .lease import FINAL_WRITE_RETRY_SECONDS, ExecutionWatch, Lease, LeaseLost, claim, new_token
from .sandbox import ProcessResult, truncation_marker
from .workspace import Workspace, add_run_files, base_environment, create_workspace
from .workspace_sweep import directory_prefix

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every step of one execution shares."""

    execution: Execution
    workspace: Workspace
    uid: int | None  # the host uid steps run as (workers/isolation.py)
    watch: ExecutionWatch
    lifecycle: Lifecycle
    files: dict[str, bytes]
    env: dict[str, str]  # the executor's variables
    package_env: dict[str, str]  # the package's, set inside the step only (workers/handlers/python.py)
    secrets: dict[str, str]
    set_secret_values: list[str] = dataclasses.field(default_factory=list)  # by steps (context.secrets.set)

    @property
    def masked_values(self) -> list[str]:
        return [*self.secrets.values(), *self.set_secret_values]


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
    with tempfile.TemporaryDirectory(prefix=directory_prefix(lease), dir=settings.EXECUTOR_WORK_DIR) as tmp:
        workspace = create_workspace(Path(tmp), files)
        add_run_files(workspace, loaded.run_files)
        env = _environment(workspace, execution, files)
        uid = step_uid() if sandbox_enabled() else None
        give_to_step_uid(workspace.step_dirs, uid)
        watch = ExecutionWatch(lease)
        context = RunContext(execution, workspace, uid, watch, lifecycle, files, env, loaded.package_env,
                             loaded.secrets)  # fmt: skip
        handed_over = _run_steps(lease, context, steps)
    if handed_over:
        _hand_over(lease, execution)
    else:
        lifecycle.finished(_finish(lease, execution, steps, watch))


def _code_snapshot(package) -> tuple[dict[str, bytes], str]:
    """The package's files and the Git commit they came from, read in one snapshot: a sync landing meanwhile
    (packages/git_sync.py) changes both or neither. The run then works on its own copy until it ends."""
    own_transaction = not connection.in_atomic_block  # (tests run the runner inside theirs)
    with transaction.atomic():
        if own_transaction and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        commit = Package.objects.filter(pk=package.pk).values_list("source_commit", flat=True).get()
        files = {script.file_name: bytes(script.content) for script in package.scripts.all()}
    return files, commit


def _hand_over(lease: Lease, execution: Execution) -> None:
    """This worker is shutting down: the run goes back to the queue with its remaining steps (workers/shutdown.py).
    Clearing the lease fences this worker off; the next one to claim it continues where this one stopped."""
    lease.update_execution(
        status=ExecutionStatus.PENDING,
        status_reason=f"handed over by {execution.worker_name}, which is shutting down",
        lease_owner="",
        worker_name="",
        heartbeat_at=None,
    )
    enqueue(execution)
    logger.warning("execution %s handed over to another worker: this one is shutting down", execution.id)


def _finish(lease: Lease, execution: Execution, steps: list[ExecutionStep], watch: ExecutionWatch) -> ExecutionStatus:
    """Close the execution from its steps' final statuses (set on the step objects by _run_steps)."""
    failed = [step for step in steps if step.status == StepStatus.FAILED]
    now = timezone.now()
    _read(lambda: execution.refresh_from_db(fields=["cancel_requested_at", "cancel_requested_by"]), execution)
    if execution.cancel_requested_at:
        status, reason = ExecutionStatus.CANCELLED, execution.cancelled_reason
    elif watch.stop_reason == "database":
        status, reason = ExecutionStatus.FAILED, watch.database_reason
    elif failed:
        names = ", ".join(f"{step.position} ({step.file_name})" for step in failed)
        status = ExecutionStatus.FAILED
        reason = f"failed: step {names} failed" if len(failed) == 1 else f"failed: steps {names} failed"
    else:
        status, reason = ExecutionStatus.COMPLETED, ""
    lease.update_execution(status=status, status_reason=reason, finished_at=now)
    logger.info("execution %s finished", execution.id)
    return status


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
            lease.update_step(step.id, status=StepStatus.SKIPPED, status_reason=skip_reason)
            step.status = StepStatus.SKIPPED
        else:
            step.status = _run_step(lease, context, step)
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


def _run_step(lease: Lease, context: RunContext, step: ExecutionStep) -> StepStatus:
    """Run one step and record its outcome."""
    handler = handler_for(kind_for_file_name(step.file_name))
    if handler is None:
        lease.update_step(step.id, status=StepStatus.UNPROCESSED, status_reason="no handler for this file type")
        return StepStatus.UNPROCESSED
    started = timezone.now()
    lease.update_step(step.id, status=StepStatus.RUNNING, started_at=started)
    if step.file_name not in context.files:
        return _record_failure(lease, step, started, "failed: the script was removed from the package")
    is_sql = kind_for_file_name(step.file_name) == ScriptKind.SQL
    package = context.execution.package
    watch = context.watch
    run = StepRun(
        file_name=step.file_name,
        package_dir=context.workspace.package_dir,
        private_dir=context.workspace.private_dir,
        payload=_payload(context.execution, context.secrets),
        env=context.env,
        package_env=context.package_env,
        interpreter=settings.EXECUTOR_SCRIPT_PYTHON,
        timeout_seconds=package.effective_step_timeout,
        output_cap_bytes=settings.EXECUTOR_OUTPUT_CAP_BYTES,
        cancel=watch.stop,
        on_progress=_live_output(lease, step, context.masked_values, watch),
        on_tick=watch.tick,
        sql=_sql_settings(context) if is_sql else {},
        # SQL steps must reach their database; Python steps get the network only if the package allows.
        isolation=isolation_for(context.workspace.step_dirs, network=is_sql or package.network_access, uid=context.uid),
    )
    state = None if is_sql else fx_bridge.begin_step(context.workspace, context.execution, context.uid)
    try:
        check_sandbox()
        result = handler(run)
    except LeaseLost:
        raise
    except OSError as exc:  # the interpreter is missing or not executable
        return _record_failure(lease, step, started, f"failed: could not start the script ({exc.strerror})")
    except (StepSetupError, SandboxUnavailable) as exc:
        return _record_failure(lease, step, started, f"failed: {exc}")
    except Exception as exc:  # the worker's fault, not the script's: this step fails, the later ones are skipped
        logger.exception("execution %s: internal error running step %s", context.execution.id, step.position)
        return _record_failure(lease, step, started, _internal_error(exc, context.masked_values))
    if state is not None:  # what the script asked FX's backends for: state, secrets, later runs, events
        result = _with_fx_requests_done(context, result, state)
    if result.cancelled and watch.stop_reason == "shutdown":
        return _interrupted_by_shutdown(lease, context, step, result)
    if result.cancelled and watch.stop_reason == "database":
        status, reason = StepStatus.FAILED, watch.database_reason
    elif result.cancelled:
        execution = _read(
            lambda: Execution.objects.select_related("cancel_requested_by").get(pk=context.execution.pk),
            context.execution,
        )
        status, reason = StepStatus.CANCELLED, execution.cancelled_reason
    else:
        status, reason = _outcome(result, run.timeout_seconds)
    lease.update_step(
        step.id,
        status=status,
        status_reason=reason,
        exit_code=result.exit_code,
        **_final_output(context, result),
        finished_at=timezone.now(),
        duration_ms=result.duration_ms,
    )
    return status


def _with_fx_requests_done(context: RunContext, result: ProcessResult, state: dict) -> ProcessResult:
    """Carry out the step's FX requests; what could not be done is told at the end of its stderr, and secrets it
    set are masked in its output like the others (for this and the next steps)."""
    collected = fx_bridge.collect(context.workspace, context.execution, state)
    if collected.secret_values:
        context.set_secret_values.extend(collected.secret_values)
        context.secrets.update(secrets_for(context.execution.package))  # the next steps' argv[1] has them
    if not collected.notes:
        return result
    notes = "".join(f"executor: {note}\n" for note in collected.notes)
    return dataclasses.replace(result, stderr=result.stderr + notes)


def _final_output(context: RunContext, result: ProcessResult) -> dict[str, str]:
    """stdout and stderr as stored: secrets masked, a marker where the cap cut them."""
    secret_values, cap = context.masked_values, settings.EXECUTOR_OUTPUT_CAP_BYTES
    return {
        "stdout": masking.mask(result.stdout, secret_values, truncated=result.stdout_dropped > 0)
        + truncation_marker(result.stdout_dropped, cap),
        "stderr": masking.mask(result.stderr, secret_values, truncated=result.stderr_dropped > 0)
        + truncation_marker(result.stderr_dropped, cap),
    }


def _interrupted_by_shutdown(
    lease: Lease, context: RunContext, step: ExecutionStep, result: ProcessResult
) -> StepStatus:
    """The step outlived the shutdown grace period. PENDING (run it again elsewhere) if the package allows one
    more retry after worker loss, else FAILED."""
    grace = settings.EXECUTOR_SHUTDOWN_GRACE_SECONDS
    execution = context.execution
    if execution.retries < execution.package.retries_after_worker_loss:
        lease.update_execution(retries=F("retries") + 1)
        note = f"interrupted: its worker shut down after {grace} s; runs again on another worker"
        lease.update_step(step.id, status=StepStatus.PENDING, status_reason=note, **_final_output(context, result))
        return StepStatus.PENDING
    lease.update_step(
        step.id,
        status=StepStatus.FAILED,
        status_reason=f"failed: interrupted, its worker shut down and the step was still running after {grace} s",
        **_final_output(context, result),
        finished_at=timezone.now(),
        duration_ms=result.duration_ms,
    )
    return StepStatus.FAILED


def _sql_settings(context: RunContext) -> dict:
    """Where and how SQL steps run. The database is the administrator's SQL connection that config.json names, or
    the platform default (packages/sql_connections.py); a package never supplies a URL. Without one, `error` says
    why and the SQL handler fails the step with it."""
    from packages.sql_connections import SqlConnectionError, url_for  # (this function is its only user here)

    try:
        config = json.loads(context.files.get("config.json", b"{}"))
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}
    try:
        database_url, error = url_for(context.execution.package, config), ""
    except SqlConnectionError as exc:
        database_url, error = "", str(exc)
    return {
        "database_url": database_url,
        "error": error,
        "statement_timeout_ms": settings.EXECUTOR_SQL_STATEMENT_TIMEOUT_SECONDS * 1000,
        "max_rows": settings.EXECUTOR_SQL_MAX_ROWS,
        "config": config,
    }


def _live_output(lease: Lease, step: ExecutionStep, secret_values, watch: ExecutionWatch):
    """Store the output so far while the step runs, so the results page shows it live and a crash keeps it.
    Skipped while the database is unreachable (the watch's next poll finds out when it is back): the next write,
    or the final one, has it all.

    truncated=True: the output may end in the middle of a secret being printed; the final write masks exactly.
    """

    def store(stdout: str, stderr: str) -> None:
        if watch.database_down:
            return
        try:
            lease.try_update_step(
                step.id,
                stdout=masking.mask(stdout, secret_values, truncated=True),
                stderr=masking.mask(stderr, secret_values, truncated=True),
            )
        except database.UNREACHABLE as exc:
            watch.database_failed(exc)

    return store


def _outcome(result: ProcessResult, timeout_seconds: float) -> tuple[StepStatus, str]:
    if result.sandbox_error:  # the script never ran: not its exit code
        return StepStatus.FAILED, f"failed: sandbox could not start: {result.sandbox_error}"
    if result.timed_out:
        return StepStatus.FAILED, f"failed: timed out after {timeout_seconds:g} s"
    if result.exit_code == 0:
        return StepStatus.COMPLETED, ""
    # bwrap reports a child killed by signal n as exit code 128 + n.
    if result.exit_code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return StepStatus.FAILED, "failed: CPU time limit"
    if result.stderr.rstrip().endswith("MemoryError"):  # Python's way of hitting the address-space limit
        return StepStatus.FAILED, "failed: memory limit"
    if result.exit_code < 0:
        return StepStatus.FAILED, f"failed: killed by signal {-result.exit_code}"
    return StepStatus.FAILED, f"failed: exit code {result.exit_code}"


def _record_failure(lease: Lease, step: ExecutionStep, started, reason: str) -> StepStatus:
    finished = timezone.now()
    lease.update_step(
        step.id,
        status=StepStatus.FAILED,
        status_reason=reason,
        finished_at=finished,
        duration_ms=round((finished - started).total_seconds() * 1000),
    )
    return StepStatus.FAILED


def _payload(execution: Execution, secrets: dict[str, str]) -> dict:
    """argv[1]: the run's parameters at the top level, then the platform's keys, which a parameter cannot spoof."""
    package = execution.package
    platform = {
        "package_name": package.package_name,
        "package_id": str(package.id),
        "execution_id": str(execution.id),
        "_fxexec": str(execution.id),
        "_fxcid": execution.correlation_id,
        "trigger_type": execution.trigger_type,
        "secrets": secrets,
    }
    if execution.trigger_event:
        platform["origin_event_type"] = execution.trigger_event.type
    return {**execution.params, **platform}


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


def _internal_error(exc: Exception, secret_values: list[str]) -> str:
    return f"failed: internal error in the worker: {type(exc).__name__}: {masking.mask(str(exc), secret_values)}"


def _fail_unfinished(lease: Lease, reason: str) -> None:
    """After an error outside any step: the running step (if any) fails with `reason`, the steps after it are
    skipped, and the execution fails, so nothing stays in progress (retried through a database blink; should
    the database stay away, the heartbeat or the reaper resolves the execution later)."""
    now = timezone.now()

    def record() -> None:
        mine = ExecutionStep.objects.filter(execution_id=lease.execution_id, execution__lease_owner=lease.token)
        mine.filter(status=StepStatus.RUNNING).update(status=StepStatus.FAILED, status_reason=reason, finished_at=now)
        mine.filter(status=StepStatus.PENDING).update(
            status=StepStatus.SKIPPED, status_reason="skipped: the execution failed (see its reason)"
        )
        lease.update_execution(status=ExecutionStatus.FAILED, status_reason=reason, finished_at=now)

    try:
        database.retrying(record, seconds=FINAL_WRITE_RETRY_SECONDS, what=f"execution {lease.execution_id}")
    except LeaseLost:
        pass
    except Exception:
        logger.exception("execution %s: could not record the error", lease.execution_id)


def _read(query, execution: Execution):
    """A read on the way to a step's or the run's final write: retried through a database blink like that write."""
    return database.retrying(query, seconds=FINAL_WRITE_RETRY_SECONDS, what=f"execution {execution.id}")
