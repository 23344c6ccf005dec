"""SQL steps: the template is rendered and executed by workers/runtime/sql_step.py, in the script runtime.

The database: a package's `sql_database_url` config key, else its secret SQL_DATABASE_URL, else
EXECUTOR_SQL_DATABASE_URL. Never the executor's own database unless someone configures exactly that.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from workers.sandbox import ProcessResult

from .errors import StepSetupError
from .process import run_step_process, write_step_file

if TYPE_CHECKING:
    from . import StepRun

SQL_STEP = Path(__file__).resolve().parent.parent / "runtime" / "sql_step.py"


def run(step: "StepRun") -> ProcessResult:
    if not step.sql.get("database_url"):
        raise StepSetupError(step.sql.get("error") or "no SQL database configured")
    spec_path = step.package_dir.parent / "fx" / f"sql-{step.file_name}.json"
    spec = {"file_name": step.file_name, "params": step.payload, "config": step.sql["config"], **step.sql}
    write_step_file(step, spec_path, json.dumps(spec))
    return run_step_process(step, [step.interpreter, str(SQL_STEP), str(spec_path)], step.env)
