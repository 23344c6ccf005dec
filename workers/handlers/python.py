"""Python steps: `python <script> '<json>'`, the FX invocation, with the script runtime's interpreter."""

import json
from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult, run_process

if TYPE_CHECKING:
    from . import StepRun


def run(step: "StepRun") -> ProcessResult:
    argv = [step.interpreter, step.file_name, json.dumps(step.payload)]
    return run_process(
        argv,
        cwd=str(step.package_dir),
        env=step.env,
        timeout_seconds=step.timeout_seconds,
        output_cap_bytes=step.output_cap_bytes,
        cancel=step.cancel,
        on_progress=step.on_progress,
    )
