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
from workers import warm
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
    package = context.execution.package
    return {
        "package_env": context.package_env,  # the package's variables, read once per run (workers/runner.py)
        "cold_because": warm.not_warm_because(package.warm_steps, context.package_env),
    }


def run(step: "StepRun") -> ProcessResult:
    """Warm when it can be (workers/warm.py), else (or when warm could not start it) cold."""
    if step.supervision.isolation is not None and step.options["cold_because"] is None:
        result = warm.run(_warm_request(step), step.supervision)
        if result is not None:
            return result
    return _run_cold(step)


def _warm_request(step: "StepRun") -> warm.Request:
    """The same argv as a cold step, argv[1] in place: it goes to the step's own process, never to a command line."""
    argv = [step.file_name, json.dumps(step.payload)]
    cwd = str(step.workspace.package_dir)
    return warm.Request(argv=argv, env=step.env, package_env=step.options["package_env"], cwd=cwd)


def _run_cold(step: "StepRun") -> ProcessResult:
    private_dir, package_env = step.workspace.private_dir, step.options["package_env"]
    env = {**step.env, "EXECUTOR_ARGS_FILE": str(private_dir / ARGS_FILE)}
    files = {ARGS_FILE: json.dumps(step.payload).encode()}
    if package_env:
        env["EXECUTOR_ENV_FILE"] = str(private_dir / ENV_FILE)
        files[ENV_FILE] = json.dumps(package_env).encode()
    return run_step_process(step, [step.interpreter, step.file_name, ARGS_PLACEHOLDER], env, files)
