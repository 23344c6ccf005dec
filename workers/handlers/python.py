"""Python steps: `python <script> '<json>'`, the FX invocation, with the script runtime's interpreter.

argv[1] carries decrypted secrets, and a command line is visible to every `ps` on the worker host. So the JSON
goes into a private file of the step, and the runtime's start-up hook (workers/runtime/site/executor_fx) puts
it into sys.argv[1] before the script runs: the script sees exactly what FX would pass, `ps` sees a placeholder.

The package's environment variables come the same way and the hook adds them to os.environ: the processes that
set the sandbox up (and setpriv inside it, still privileged) never have them, so no LD_PRELOAD or the like can
run code in them. The executor's own variables (`step.env`) win over a package variable of the same name.

The runtime's sitecustomize also loads the FX adapter (workers/fx_bridge.py) into every Python step.
"""

import json
from typing import TYPE_CHECKING

from packages.models import Package
from workers.sandbox import ProcessResult

from .process import run_step_process

if TYPE_CHECKING:
    from workers.steps import RunContext

    from . import StepRun

FX_ADAPTER = True
ARGS_PLACEHOLDER = "@EXECUTOR_ARGS_FILE"
ARGS_FILE = "argv.json"
ENV_FILE = "environment.json"


def network(package: Package) -> bool:
    return package.network_access  # only if the package allows it


def prepare(context: "RunContext") -> dict:
    return {"package_env": context.package_env}  # the package's variables, read once per run (workers/runner.py)


def run(step: "StepRun") -> ProcessResult:
    private_dir, package_env = step.workspace.private_dir, step.options["package_env"]
    env = {**step.env, "EXECUTOR_ARGS_FILE": str(private_dir / ARGS_FILE)}
    files = {ARGS_FILE: json.dumps(step.payload).encode()}
    if package_env:
        env["EXECUTOR_ENV_FILE"] = str(private_dir / ENV_FILE)
        files[ENV_FILE] = json.dumps(package_env).encode()
    return run_step_process(step, [step.interpreter, step.file_name, ARGS_PLACEHOLDER], env, files)
