"""The script runtime (.runtime/) is a real environment with the FX libraries, separate from the executor's."""

import subprocess

from django.conf import settings

IMPORTS = [
    "ferris_cli.v2",
    "ferris_cli.v2.services.config",
    "ferris_cli.v2.services.events",
    "ferris_cli.v2.services.postgres",
    "psycopg2",
    "sqlalchemy",
    "jinja2",
    "consul",
    "kafka",
    "cloudevents",
]


def runtime_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [settings.EXECUTOR_SCRIPT_PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env={}
    )


def test_every_fx_library_imports_in_the_runtime():
    result = runtime_python(f"import importlib\nfor name in {IMPORTS!r}: importlib.import_module(name)")
    assert result.returncode == 0, result.stderr


def test_the_runtime_cannot_import_the_executor():
    result = runtime_python("import django")
    assert result.returncode != 0
    assert "No module named 'django'" in result.stderr
