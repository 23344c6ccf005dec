import os
from typing import NamedTuple
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.factories import make_package, seed_files
from tests.parallel import database_suffix


@pytest.fixture
def seed_package(db):
    return make_package("seed_package", seed_files())


class Published(NamedTuple):
    """One message the code under test published (executor_project/publishing.py)."""

    task: str  # its name, e.g. "executor.run_execution"
    args: list
    queue: str  # the lane


class PublishedMessages(list[Published]):
    def of(self, task: str) -> list[Published]:
        """Those of one task, e.g. `enqueued.of("executor.sync_repository")`."""
        return [message for message in self if message.task == task]


@pytest.fixture
def enqueued(monkeypatch) -> PublishedMessages:
    """What is published to the broker, recorded instead of sent, for tests whose subject is not the broker: a list
    of (task, args, queue). The queued markers of executions/queueing.py still go to the test Redis."""
    published = PublishedMessages()

    def publish(task: str, args, *, queue: str, producer=None) -> None:
        published.append(Published(task, list(args), queue))

    monkeypatch.setattr("executor_project.publishing.publish", publish)
    return published


@pytest.fixture
def no_broker(monkeypatch) -> None:
    """Executions are recorded and never published, as if the web process died before publishing: for tests that
    run them in this process (workers/runner.py) instead of through a worker."""
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)


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
    # One per DATABASE_URL and parallel worker, so two test runs (or two workers of one) never share it.
    name = f"{server.path.strip('/')}_sql_steps_test{database_suffix()}"
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


@pytest.fixture
def work_dir(tmp_path, settings):
    """EXECUTOR_WORK_DIR of this test process: an empty directory of its own (a test that starts workers passes it
    to them)."""
    directory = tmp_path / "work"
    directory.mkdir()
    settings.EXECUTOR_WORK_DIR = str(directory)
    return directory
