"""Throw-away benchmark databases on DATABASE_URL's server, and the environment a benchmark runs with."""

import os
from urllib.parse import urlsplit

SERVER = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/executor")
# Not a secret: benchmarks store only throw-away data.
BENCH_FERNET_KEY = "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0="


def on_server(name: str) -> str:
    """The URL of database `name` on DATABASE_URL's server."""
    return urlsplit(SERVER)._replace(path=f"/{name}").geturl()


def use_bench_environment(database_url: str, **extra: str) -> None:
    """Settings for this process's Django and for the processes the benchmark starts (they inherit them)."""
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench"),
        EXECUTOR_FERNET_KEYS=os.environ.get("EXECUTOR_FERNET_KEYS", BENCH_FERNET_KEY),
        DJANGO_SETTINGS_MODULE="executor_project.settings",
        LOG_LEVEL="WARNING",
        **extra,
    )


def recreate_database(server_url: str, name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(urlsplit(server_url)._replace(path="/postgres").geturl())
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
