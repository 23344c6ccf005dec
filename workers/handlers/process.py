"""The one way handlers start a step's process, with every control of its Supervision."""

from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult, run_process

if TYPE_CHECKING:
    from . import StepRun


def run_step_process(
    step: "StepRun", argv: list[str], env: dict[str, str], private_files: dict[str, bytes]
) -> ProcessResult:
    """`private_files`: file name in the step's private directory -> content (see workers/workspace.py)."""
    watch = step.supervision
    return run_process(
        argv,
        cwd=str(step.workspace.package_dir),
        env=env,
        timeout_seconds=watch.timeout_seconds,
        output_cap_bytes=watch.output_cap_bytes,
        cancel=watch.cancel,
        on_progress=watch.on_progress,
        on_tick=watch.on_tick,
        isolation=watch.isolation,
        private_files={str(step.workspace.private_dir / name): content for name, content in private_files.items()},
    )
