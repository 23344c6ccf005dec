"""Quick-start mode (no DATABASE_URL): where its data directory is, and the check that keeps a command from
creating a second one.

The data directory holds the SQLite database, the generated fernet.key and the embedded Redis's socket. A command
run with another EXECUTOR_DATA_DIR than `make run` used (or without the one it used) would otherwise open a new,
empty SQLite file beside a new key and fail later with a raw `no such table` traceback. manage.py asks this module
first, before Django loads the settings (which generate the key): nothing is created for a command that cannot work.
No Django here, so that question costs nothing and creates nothing.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# The commands that may run without the database: migrate creates it (`make run` runs it first), the others do not
# open it (collectstatic runs at image build time; test makes a database of its own).
COMMANDS_WITHOUT_DATABASE = frozenset(
    {"migrate", "collectstatic", "check", "test", "help", "version", "--help", "-h", "--version"}
)


def enabled() -> bool:
    return "DATABASE_URL" not in os.environ


def data_dir() -> Path:
    return Path(os.environ.get("EXECUTOR_DATA_DIR", str(BASE_DIR / ".devdata")))


def database_path() -> Path:
    return data_dir() / "db.sqlite3"


def missing_database(argv: list[str]) -> str | None:
    """Why this manage.py command line must not run, or None. Only in quick-start mode, and only for a command
    that needs the database while none is there."""
    command = argv[1] if len(argv) > 1 else "help"
    if not enabled() or command in COMMANDS_WITHOUT_DATABASE:
        return None
    path = database_path()
    # An empty file is what an earlier command of this kind left behind: still no database.
    if path.is_file() and path.stat().st_size > 0:
        return None
    return f"no Executor database at {path}: run `make run` first, or set EXECUTOR_DATA_DIR"
