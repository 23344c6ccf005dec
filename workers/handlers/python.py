"""Python steps: `python <script> '<json>'`, the FX invocation, with the script runtime's interpreter.

argv[1] carries decrypted secrets, and a command line is visible to every `ps` on the worker host. So the JSON
goes into a private file of the step, and the runtime's start-up hook (workers/runtime/site/executor_fx) puts
it into sys.argv[1] before the script runs: the script sees exactly what FX would pass, `ps` sees a placeholder.
"""

import json
from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult

from .process import run_step_process, write_step_file

if TYPE_CHECKING:
    from . import StepRun

ARGS_PLACEHOLDER = "@EXECUTOR_ARGS_FILE"


def run(step: "StepRun") -> ProcessResult:
    args_file = step.package_dir.parent / "fx" / f"argv-{step.file_name}.json"
    write_step_file(step, args_file, json.dumps(step.payload))
    return run_step_process(
        step, [step.interpreter, step.file_name, ARGS_PLACEHOLDER], {**step.env, "EXECUTOR_ARGS_FILE": str(args_file)}
    )
