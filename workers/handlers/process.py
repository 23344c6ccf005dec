"""The one way handlers start a step's process, with every control the StepRun carries."""

from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult, run_process

if TYPE_CHECKING:
    from . import StepRun


def run_step_process(
    step: "StepRun", argv: list[str], env: dict[str, str], private_files: dict[str, bytes]
) -> ProcessResult:
    """`private_files`: file name in the step's private directory -> content (see workers/workspace.py)."""
    return run_process(
        argv,
        cwd=str(step.package_dir),
        env=env,
        timeout_seconds=step.timeout_seconds,
        output_cap_bytes=step.output_cap_bytes,
        cancel=step.cancel,
        on_progress=step.on_progress,
        on_tick=step.on_tick,
        isolation=step.isolation,
        private_files={str(step.private_dir / name): content for name, content in private_files.items()},
    )
