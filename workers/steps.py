"""One step of a run: its handler prepares it, its process runs under the run's watch, and its outcome is recorded.

Record first, act, then update: the step is marked `running` before its process starts and gets its result right
after, so a crash leaves a visible row, not a mystery. Every status change is a transition of
executions/transitions.py, fenced by the run's lease. Secret values are masked in everything stored.

What differs between kinds of steps (Python, SQL) is their handler's (workers/handlers/); what is the same for
every kind is here: the payload, the supervision (timeout, output cap, cancel, live output, sandbox), the sandbox
self-test, and how an outcome becomes a status and a reason.
"""

import dataclasses
import logging
import signal

from django.conf import settings
from django.utils import timezone

from executions import transitions
from executions.lifecycle import Lifecycle
from executions.models import Execution, ExecutionStep, StepStatus
from executor_project import database, metrics
from packages.models import kind_for_file_name, secrets_for

from . import fx_bridge, masking
from .fx_events import StepEvents
from .handlers import Handler, StepRun, Supervision, handler_for
from .handlers.errors import StepSetupError
from .isolation import SandboxUnavailable, check_sandbox, isolation_for
from .lease import ExecutionWatch, Lease, LeaseLost
from .sandbox import ProcessResult, truncation_marker
from .workspace import Workspace

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunContext:
    """What every step of one execution shares. Not frozen: the secrets a step sets are added for the next ones."""

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

    def add_secrets_set_by_a_step(self, values: list[str]) -> None:
        """Masked in this step's output and the next ones'; the next steps' argv[1] has them too."""
        self.set_secret_values.extend(values)
        self.secrets.update(secrets_for(self.execution.package))


class _NotRun(Exception):
    """The step's process could not be run, or failed for the worker's reasons; the message is the step's reason."""


def run_step(lease: Lease, context: RunContext, step: ExecutionStep) -> StepStatus:
    """Run one step and record its outcome; PENDING when a shutdown cut it off, to run again on another worker."""
    handler = handler_for(kind_for_file_name(step.file_name))
    if handler is None:
        lease.apply(transitions.mark_unprocessed, step.id)
        return StepStatus.UNPROCESSED
    started = timezone.now()
    lease.apply(transitions.start_step, step.id, started)
    if step.file_name not in context.files:
        return _record_failure(lease, step, started, "failed: the script was removed from the package")
    # Followed while the step runs, so an event leaves as it is sent (workers/fx_events.py).
    events = fx_bridge.step_events(context.workspace, context.execution, context.watch) if handler.FX_ADAPTER else None
    run = _step_run(lease, context, step, handler, events)
    try:
        result = _process(context, step, handler, run, events)
    except _NotRun as exc:
        return _record_failure(lease, step, started, str(exc))
    if result.cancelled and context.watch.stop_reason == "shutdown":
        return _interrupted_by_shutdown(lease, context, step, result)
    status, reason = _judge(lease, context, result, run.supervision.timeout_seconds)
    output = _final_output(context, result)
    lease.apply(transitions.finish_step, step.id, status, reason, exit_code=result.exit_code, **output,
                finished_at=timezone.now(), duration_ms=result.duration_ms)  # fmt: skip
    _observe(step, status, result.duration_ms, sandbox_failed=bool(result.sandbox_error))
    return status


def _observe(step: ExecutionStep, status: StepStatus, duration_ms: int | None, *, sandbox_failed: bool = False) -> None:
    """The step's duration by handler and outcome, and whether its sandbox could not start (metrics)."""
    handler = kind_for_file_name(step.file_name)
    metrics.observe(metrics.STEP_DURATION, (duration_ms or 0) / 1000, handler=handler, status=status)
    if sandbox_failed:
        metrics.inc(metrics.SANDBOX_START_FAILURES, kind="cold")


def _step_run(lease: Lease, context: RunContext, step: ExecutionStep, handler: Handler,
              events: StepEvents | None) -> StepRun:  # fmt: skip
    package, watch = context.execution.package, context.watch
    return StepRun(
        file_name=step.file_name,
        workspace=context.workspace,
        payload=_payload(context.execution, context.secrets),
        env=context.env,
        interpreter=settings.EXECUTOR_SCRIPT_PYTHON,
        options=handler.prepare(context),
        supervision=Supervision(
            timeout_seconds=package.effective_step_timeout,
            output_cap_bytes=settings.EXECUTOR_OUTPUT_CAP_BYTES,
            cancel=watch.stop,
            on_progress=_live_output(lease, step, context.masked_values, watch),
            on_tick=watch.tick if events is None else _ticking(watch, events),
            isolation=isolation_for(context.workspace.step_dirs, network=handler.network(package), uid=context.uid),
        ),
    )


def _ticking(watch: ExecutionWatch, events: StepEvents):
    """The watch's tick, then the events sent since the last one (not when the watch found the lease lost)."""

    def tick() -> None:
        watch.tick()
        events.tick()

    return tick


def _process(context: RunContext, step: ExecutionStep, handler: Handler, run: StepRun,
             events: StepEvents | None) -> ProcessResult:  # fmt: skip
    """The step's process run to its end (with its FX requests done); _NotRun when it could not be run or the worker
    failed it. Errors of the FX adapter's bookkeeping, like any outside the process, fail the whole run."""
    fx_state = fx_bridge.begin_step(context.workspace, context.execution, context.uid) if handler.FX_ADAPTER else None
    try:
        check_sandbox()
        result = handler.run(run)
    except LeaseLost:
        raise
    except OSError as exc:  # the interpreter is missing or not executable
        raise _NotRun(f"failed: could not start the script ({exc.strerror})") from exc
    except SandboxUnavailable as exc:
        metrics.inc(metrics.SANDBOX_START_FAILURES, kind="self_test")
        raise _NotRun(f"failed: {exc}") from exc
    except StepSetupError as exc:
        raise _NotRun(f"failed: {exc}") from exc
    except Exception as exc:  # the worker's fault, not the script's: this step fails, the later ones are skipped
        logger.exception("execution %s: internal error running step %s", context.execution.id, step.position)
        raise _NotRun(_internal_error(exc, context.masked_values)) from exc
    if fx_state is None:
        return result
    return _with_fx_requests_done(context, result, fx_state, events)


def _judge(lease: Lease, context: RunContext, result: ProcessResult, timeout_seconds: float) -> tuple[StepStatus, str]:
    """The step's status and reason from how its process ended, and why the watch stopped it, if it did."""
    watch = context.watch
    if result.cancelled and watch.stop_reason == "database":
        return StepStatus.FAILED, watch.database_reason
    if result.cancelled:
        pk = context.execution.pk
        execution = lease.read(lambda: Execution.objects.select_related("cancel_requested_by").get(pk=pk))
        return StepStatus.CANCELLED, execution.cancelled_reason
    return _outcome(result, timeout_seconds)


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


def _with_fx_requests_done(context: RunContext, result: ProcessResult, state: dict,
                           events: StepEvents | None) -> ProcessResult:  # fmt: skip
    """Carry out the step's FX requests; what could not be done is told at the end of its stderr, and secrets it
    set are masked in its output like the others (for this and the next steps)."""
    collected = fx_bridge.collect(context.workspace, context.execution, state, events)
    if collected.secret_values:
        context.add_secrets_set_by_a_step(collected.secret_values)
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
    """The step outlived the shutdown grace period (workers/shutdown.py). PENDING (run it again elsewhere) if the
    package allows one more retry after worker loss, else FAILED."""
    grace = settings.EXECUTOR_SHUTDOWN_GRACE_SECONDS
    execution = context.execution
    if execution.retries < execution.package.retries_after_worker_loss:
        lease.apply(transitions.count_retry)
        note = f"interrupted: its worker shut down after {grace} s; runs again on another worker"
        lease.apply(transitions.requeue_step, step.id, note, **_final_output(context, result))
        return StepStatus.PENDING
    reason = f"failed: interrupted, its worker shut down and the step was still running after {grace} s"
    lease.apply(transitions.finish_step, step.id, StepStatus.FAILED, reason, **_final_output(context, result),
                finished_at=timezone.now(), duration_ms=result.duration_ms)  # fmt: skip
    _observe(step, StepStatus.FAILED, result.duration_ms)
    return StepStatus.FAILED


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


def _record_failure(lease: Lease, step: ExecutionStep, started, reason: str) -> StepStatus:
    finished = timezone.now()
    duration_ms = round((finished - started).total_seconds() * 1000)
    lease.apply(transitions.finish_step, step.id, StepStatus.FAILED, reason, finished_at=finished,
                duration_ms=duration_ms)  # fmt: skip
    _observe(step, StepStatus.FAILED, duration_ms)
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


def _internal_error(exc: Exception, secret_values: list[str]) -> str:
    return f"failed: internal error in the worker: {type(exc).__name__}: {masking.mask(str(exc), secret_values)}"
