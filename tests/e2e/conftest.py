"""Fixtures of the end-to-end tests: real processes (tests/e2e/processes.py) against the test database and the test
Redis, and a browser (tests/e2e/browser.py)."""

import pytest
import redis
from django.conf import settings

from tests.e2e import browser, processes
from workers.models import ReaperClock


# Package scope: stopped after the last end-to-end test. Its heartbeat thread runs the reaper every few seconds
# against the test database, which must not go on while later test modules set up reaper state of their own.
@pytest.fixture(scope="package")
def celery_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """The end-to-end tests' worker, on every lane."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # no messages left over from an earlier run
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with django_db_blocker.unblock():
        with processes.worker_process(log_path) as worker:
            yield worker
        # Its reaper's last round may come after the last test's flush: its clock must not look like a pause of
        # the reaper to the tests that follow.
        ReaperClock.objects.all().delete()


@pytest.fixture
def beat(tmp_path):
    """A real `celery beat` (the database scheduler) against the test database."""
    with processes.beat_process(tmp_path / "beat.log") as beat:
        yield beat


@pytest.fixture
def browser_page(request, monkeypatch):
    """A fresh page of a headless Chromium (tests/e2e/browser.py); the page a failing test was on is saved as
    artifacts/screenshots/FAILED-<test>.png."""
    # Playwright's sync API marks an asyncio loop as running on this thread, which Django's ORM takes for an async
    # context; the test's own ORM calls stay synchronous, so let them through.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with browser.chromium_page(request) as page:
        yield page
