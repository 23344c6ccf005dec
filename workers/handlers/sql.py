"""SQL steps: the template is rendered and executed by workers/runtime/sql_step.py, in the script runtime.

Everything the worker knows about SQL steps is here. The database is the administrator's SQL connection that the
package's config.json names, or the platform default (packages/sql_connections.py); a package never supplies a
URL. The spec, with that URL, reaches the step as a memory-only private file. SQL steps get the network (they must
reach their database) and no FX adapter (`-I` below keeps the runtime's sitecustomize out).
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from packages.models import Package
from packages.sql_connections import SqlConnectionError, url_for
from workers.sandbox import ProcessResult

from .errors import StepSetupError
from .process import run_step_process

if TYPE_CHECKING:
    from workers.steps import RunContext

    from . import StepRun

FX_ADAPTER = False
SQL_STEP = Path(__file__).resolve().parent.parent / "runtime" / "sql_step.py"
SPEC_FILE = "sql.json"


def network(package: Package) -> bool:
    return True  # whatever the package's network setting: the database is on the network


def prepare(context: "RunContext") -> dict:
    """Where and how the step runs: the database URL (or, without one, `error` saying why: run() then fails the
    step with it), the statement timeout, the row limit and the package's config."""
    try:
        config = json.loads(context.files.get("config.json", b"{}"))
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}
    try:
        database_url, error = url_for(context.execution.package, config), ""
    except SqlConnectionError as exc:
        database_url, error = "", str(exc)
    return {
        "database_url": database_url,
        "error": error,
        "statement_timeout_ms": settings.EXECUTOR_SQL_STATEMENT_TIMEOUT_SECONDS * 1000,
        "max_rows": settings.EXECUTOR_SQL_MAX_ROWS,
        "config": config,
    }


def run(step: "StepRun") -> ProcessResult:
    options, private_dir = step.options, step.workspace.private_dir
    if not options.get("database_url"):
        raise StepSetupError(options.get("error") or "no SQL database configured")
    spec = {"file_name": step.file_name, "params": step.payload, "config": options["config"], **options}
    # -I: no PYTHONPATH, user site-packages or script-directory imports, and HOME is the read-only private
    # directory: an earlier Python step of the package cannot plant code (usercustomize, a .pth file) or libpq
    # files (~/.pgpass, ~/.postgresql) into the process that holds the connection's password.
    argv = [step.interpreter, "-I", str(SQL_STEP), str(private_dir / SPEC_FILE)]
    env = {**step.env, "HOME": str(private_dir)}
    return run_step_process(step, argv, env, {SPEC_FILE: json.dumps(spec).encode()})
