"""The command line as a user meets it: manage.py in quick-start mode refuses a data directory that holds no
database instead of creating a second, empty one; `run_package --json` writes one JSON document on stdout.
(`--json --wait` with a real worker: tests/e2e/test_cli_json.py.)"""

import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command

from executor_project import quick_start
from tests.e2e.processes import BASE_DIR
from tests.factories import make_package

REFUSAL = "no Executor database at {}: run `make run` first, or set EXECUTOR_DATA_DIR"


def quick_start_manage(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """manage.py as a user runs it in another directory, without DATABASE_URL, with a data directory of its own."""
    env = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URL", "EXECUTOR_FERNET_KEYS"}}
    env["EXECUTOR_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("command", [["run_package", "seed_package"], ["import_package", str(BASE_DIR)]])
def test_a_command_without_the_quick_start_database_refuses_and_creates_nothing(tmp_path, command):
    result = quick_start_manage(tmp_path, *command)

    assert result.returncode != 0
    assert result.stderr.strip() == REFUSAL.format(tmp_path / "data" / "db.sqlite3")
    assert result.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no data directory, sqlite file or fernet.key


def test_an_empty_sqlite_file_left_by_an_earlier_run_is_no_database_either(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EXECUTOR_DATA_DIR", str(tmp_path))
    (tmp_path / "db.sqlite3").touch()

    assert quick_start.missing_database(["manage.py", "shell"]) == REFUSAL.format(tmp_path / "db.sqlite3")
    assert quick_start.missing_database(["manage.py", "migrate"]) is None  # the command that creates it
    (tmp_path / "db.sqlite3").write_bytes(b"SQLite format 3\0")
    assert quick_start.missing_database(["manage.py", "shell"]) is None


def test_with_database_url_the_data_directory_is_not_consulted(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/anything")
    monkeypatch.setenv("EXECUTOR_DATA_DIR", str(tmp_path / "nowhere"))

    assert quick_start.missing_database(["manage.py", "run_package", "x"]) is None


@pytest.mark.django_db
def test_run_package_json_without_wait_writes_the_pending_execution_alone_on_stdout(enqueued, capsys):
    make_package("alice_reports", {"main.py": "print(1)"})

    call_command("run_package", "alice_reports", "--param", "limit=10", "--json")

    out, err = capsys.readouterr()
    document = json.loads(out)
    assert (document["status"], document["data"], document["service"]) == ("pending", {"limit": 10}, "alice_reports")
    assert document["execution_id"] in err.splitlines()  # the id line, on stderr with --json
