"""The one way handlers start a step's process (with every control the StepRun carries) and hand it files."""

import os
from pathlib import Path
from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult, run_process

if TYPE_CHECKING:
    from . import StepRun


def run_step_process(step: "StepRun", argv: list[str], env: dict[str, str]) -> ProcessResult:
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
    )


def write_step_file(step: "StepRun", path: Path, text: str) -> None:
    """A file only the step may read (it may hold secrets): mode 600, owned by the uid the step runs as."""
    path.write_text(text)
    path.chmod(0o600)
    if step.isolation is not None and step.isolation.uid is not None:
        os.chown(path, step.isolation.uid, step.isolation.uid)
