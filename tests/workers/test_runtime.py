"""The script runtime (.runtime/) is a real environment with the FX libraries, separate from the executor's."""

import json
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
    "fx_ef.base",
    "ferris_ef.base",
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


def test_fx_ef_local_mode_reads_ef_env_json_outside_the_executor(tmp_path):
    """EF_ENV=local, for developing a script on a laptop: no argv, no adapter, ef_env.json in the directory."""
    (tmp_path / "ef_env.json").write_text(json.dumps({
        "params": {"package_name": "local_pkg", "package_id": "7", "region": "eu"},
        "config": {"greeting": "hi"},
        "secrets": {"TOKEN": "local-token"},
    }))  # fmt: skip
    script = (
        "import json\nfrom ferris_ef import context\n"
        "context.state.put('runs', context.state.get().get('runs', 0) + 1)\n"
        "print(json.dumps([context.package.name, context.params['region'], context.config['greeting'],"
        " context.secrets.get('TOKEN'), context.state.get()]))"
    )
    result = subprocess.run([settings.EXECUTOR_SCRIPT_PYTHON, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={"EF_ENV": "local"})  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["local_pkg", "eu", "hi", "local-token", {"runs": 1}]
