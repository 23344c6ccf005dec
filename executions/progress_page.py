"""The live part of an execution's page: its status, times and steps, and the output of the running step.

The page renders it once; while the run goes on, a few lines of JS (execution/change_form.html) fetch it again as
JSON from ExecutionAdmin.progress_view and swap it in place. The page never reloads, so nothing a person is typing
into the form below is lost.
"""

from django.db.models import Prefetch, prefetch_related_objects
from django.template.loader import render_to_string

from .models import Execution, ExecutionStep, StepStatus
from .summary import execution_as_dict

POLL_MS = 2000  # how often the page asks while the run is going
LIVE_LINES = 20  # the running step's last lines of output shown on the execution page


def progress_context(execution: Execution) -> dict:
    _prefetch_steps(execution)
    steps = sorted(execution.steps.all(), key=lambda step: step.position)
    running = next((step for step in steps if step.status == StepStatus.RUNNING), None)
    processed = sum(step.status not in (StepStatus.PENDING, StepStatus.RUNNING) for step in steps)
    return {
        "execution": execution,
        "steps": steps,
        "running": running,
        # The last lines only: the whole output is a click away (Show Results) and can be MiBs.
        "live_lines": running.stdout_lines[-LIVE_LINES:] if running else [],
        "processed": processed,
    }


def progress_html(execution: Execution) -> str:
    return render_to_string("admin/executions/execution/progress.html", progress_context(execution))


def progress_data(execution: Execution, chain_html: str) -> dict:
    """The JSON the page polls: the execution as the API gives it (executions/summary.py), whether it has ended,
    and the page's live parts as HTML rendered by the same template as the first page."""
    _prefetch_steps(execution)
    return {
        **execution_as_dict(execution),
        "finished": execution.is_finished,
        "html": {"progress": progress_html(execution), "chain": chain_html},
    }


def _prefetch_steps(execution: Execution) -> None:
    """The steps once, without their output: every open page asks every POLL_MS, and finished steps' output can be
    MiBs. The running step's output is read on its own (progress_context)."""
    if "steps" not in getattr(execution, "_prefetched_objects_cache", {}):
        light = ExecutionStep.objects.defer("stdout", "stderr")
        prefetch_related_objects([execution], Prefetch("steps", queryset=light))
