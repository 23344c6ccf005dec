"""SQL steps: the template is rendered and executed by workers/runtime/sql_step.py, in the script runtime.

The database is chosen by workers/runner.py `_sql_settings` from the administrator's SQL connections
(packages/sql_connections.py); a package never supplies a URL. The spec, with that URL, reaches the step as a
memory-only private file.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult

from .errors import StepSetupError
from .process import run_step_process

if TYPE_CHECKING:
    from . import StepRun

SQL_STEP = Path(__file__).resolve().parent.parent / "runtime" / "sql_step.py"
SPEC_FILE = "sql.json"


def run(step: "StepRun") -> ProcessResult:
    if not step.sql.get("database_url"):
        raise StepSetupError(step.sql.get("error") or "no SQL database configured")
    spec = {"file_name": step.file_name, "params": step.payload, "config": step.sql["config"], **step.sql}
    # -I: no PYTHONPATH, user site-packages or script-directory imports, and HOME is the read-only private
    # directory: an earlier Python step of the package cannot plant code (usercustomize, a .pth file) or libpq
    # files (~/.pgpass, ~/.postgresql) into the process that holds the connection's password.
    argv = [step.interpreter, "-I", str(SQL_STEP), str(step.private_dir / SPEC_FILE)]
    env = {**step.env, "HOME": str(step.private_dir)}
    return run_step_process(step, argv, env, {SPEC_FILE: json.dumps(spec).encode()})
