"""Runs one SQL step inside the script runtime: `python sql_step.py <spec.json>` (written by workers/handlers/sql.py).

The spec holds the template file name, the run's parameters, the package config, the database URL, a statement
timeout and a row limit. The template is rendered with Jinja2's *sandboxed* environment (no attribute tricks
into Python internals; undefined names are errors), then executed in ONE transaction: everything or nothing.
Several statements are allowed; the result shown is the last statement's: affected rows, and the first rows it
returned. A database error rolls back, prints the database's message on stderr and exits 1.
"""

import json
import os
import sys

import jinja2
import psycopg2
from jinja2.sandbox import SandboxedEnvironment


def main(spec_path: str) -> int:
    with open(spec_path) as handle:
        spec = json.load(handle)
    _forget(spec_path)
    with open(spec["file_name"]) as handle:
        template = handle.read()
    try:
        sql = (
            SandboxedEnvironment(undefined=jinja2.StrictUndefined)
            .from_string(template)
            .render(params=spec["params"], config=spec["config"], **spec["params"])
        )
    except jinja2.TemplateError as exc:
        print(f"template error: {exc}", file=sys.stderr)
        return 2
    try:
        return _execute(sql, spec)
    except psycopg2.Error as exc:
        print(f"database error: {str(exc).strip()}", file=sys.stderr)
        return 1


def _forget(path: str) -> None:
    """The spec holds the connection's password: without the sandbox (EXECUTOR_SANDBOX=off) it is a file on the
    worker's disk, removed as soon as it is read (in the sandbox it is a read-only memory file: that fails)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _execute(sql: str, spec: dict) -> int:
    with psycopg2.connect(spec["database_url"], connect_timeout=10) as connection:  # commits, or rolls back
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = %s", [int(spec["statement_timeout_ms"])])
            cursor.execute(sql)
            print(f"affected rows: {cursor.rowcount}")
            if cursor.description is not None:
                _print_rows(cursor, int(spec["max_rows"]))
    connection.close()
    return 0


def _print_rows(cursor, max_rows: int) -> None:
    columns = [column.name for column in cursor.description]
    rows = cursor.fetchmany(max_rows)
    print("\t".join(columns))
    for row in rows:
        print("\t".join("NULL" if value is None else str(value) for value in row))
    if cursor.fetchone() is not None:
        print(f"(first {max_rows} rows shown)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
