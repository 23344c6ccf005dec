"""Plain-data views of an execution, for the CLI (and the API later). Secrets never appear in either."""

from .models import Execution


def execution_as_dict(execution: Execution) -> dict:
    return {
        "execution_id": str(execution.id),
        "package_name": execution.package.package_name,
        "status": execution.status,
        "status_reason": execution.status_reason,
        "trigger_type": execution.trigger_type,
        "correlation_id": execution.correlation_id,
        "created_at": _iso(execution.created_at),
        "started_at": _iso(execution.started_at),
        "finished_at": _iso(execution.finished_at),
        "execution_time_ms": execution.duration_ms,
        "steps": [
            {
                "position": step.position,
                "file_name": step.file_name,
                "status": step.status,
                "status_reason": step.status_reason,
                "exit_code": step.exit_code,
                "duration_ms": step.duration_ms,
                "stdout": step.stdout,
                "stderr": step.stderr,
            }
            for step in execution.steps.order_by("position")
        ],
    }


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None
