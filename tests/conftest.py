import os
from unittest import mock
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.factories import make_package, seed_files


@pytest.fixture
def seed_package(db):
    return make_package("seed_package", seed_files())


@pytest.fixture
def enqueued():
    """Records what would be sent to the broker, for tests whose subject is not the broker."""
    with mock.patch("workers.tasks.run_execution.apply_async") as apply_async:
        yield apply_async


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    """Production serves hashed static files collected at build time; tests render pages without collecting."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(scope="session")
def sql_database_url():
    """A PostgreSQL database of its own for SQL steps to run against (never the executor's)."""
    server = urlsplit(os.environ["DATABASE_URL"])
    name = f"{server.path.strip('/')}_sql_steps_test"  # one per DATABASE_URL, so two test runs never share it
    admin = psycopg2.connect(server._replace(path="/postgres").geturl())
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield server._replace(path=f"/{name}").geturl()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
