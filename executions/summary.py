"""An execution as plain data, in the one shape both the HTTP API and the command line give it.

GET /fx/executions/<id> and /fx/cid/<cid> answer with it (its published schemas, ExecutionOut and StepOut, are in
executions/api.py: the field names are a public contract, FX clients read them); `manage.py run_package --wait`
prints the same, with each step's output added. Secrets never appear: step output is masked before it is stored
(workers/masking.py), and nothing else here holds a secret.
"""

from .models import Execution, ExecutionStep


def execution_as_dict(execution: Execution, *, with_output: bool = False) -> dict:
    """The API's ExecutionOut; `with_output` adds each step's stdout and stderr (the API leaves them out: they can
    be MiBs, and callers that list executions should not fetch them)."""
    return {
        "execution_id": execution.id,
        "service": execution.package.package_name,
        "package_id": execution.package_id,
        "status": execution.status,
        "status_reason": execution.status_reason,
        "trigger_type": execution.trigger_type,
        "origin_event_type": execution.trigger_event.type if execution.trigger_event else None,
        "data": execution.params,
        "datetime": execution.created_at,
        "started_at": execution.started_at,
        "finished_at": execution.finished_at,
        "execution_time": execution.duration_ms,
        "cid": execution.correlation_id,
        "parent_execution_id": execution.parent_execution_id,
        "chain_depth": execution.chain_depth,
        # Sorted here rather than with order_by, which would bypass steps the caller prefetched.
        "steps": [
            step_as_dict(step, with_output=with_output)
            for step in sorted(execution.steps.all(), key=lambda step: step.position)
        ],
    }


def step_as_dict(step: ExecutionStep, *, with_output: bool = False) -> dict:
    """The API's StepOut; `with_output` adds stdout and stderr."""
    data = {
        "position": step.position,
        "script": step.file_name,
        "status": step.status,
        "status_reason": step.status_reason,
        "exit_code": step.exit_code,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "execution_time": step.duration_ms,
    }
    if with_output:
        data.update(stdout=step.stdout, stderr=step.stderr)
    return data
