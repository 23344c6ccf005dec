"""The shape the import contracts of pyproject.toml cannot see: what a process actually loads.

The web side publishes runs and syncs by task name (executor_project/publishing.py), so a web process never loads
the worker's machinery (the runner, the sandbox, dulwich), and a worker still finds every task those names mean by
Celery's autodiscovery. Both are checked in a fresh interpreter: this test process has imported everything.
"""

import base64
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from executions import later_runs, notifications, queueing, saved_runs
from packages import git_webhook, schedules
from packages.models import GitRepository, Project
from tests.factories import make_package
from tests.redis_server import private_redis

WEB_SIDE = """
import importlib, json, pkgutil, sys

import django

django.setup()
from django.urls import reverse

for module in ("executor_project.urls", "executions.api", "executions.queueing", "packages.git_webhook"):
    importlib.import_module(module)
for app in ("executions", "packages", "workers"):  # every admin module, whatever django.setup() already loaded
    for found in pkgutil.iter_modules(importlib.import_module(app).__path__):
        if found.name.endswith("admin"):
            importlib.import_module(f"{app}.{found.name}")
reverse("admin:index")  # the admin's URLs, built from every registered ModelAdmin

from executions.models import TriggerType
from executions.services import trigger_execution
from packages.git_webhook import queue_sync
from packages.models import GitRepository, Package

execution = trigger_execution(Package.objects.get(pk=int(sys.argv[1])), trigger_type=TriggerType.MANUAL)
queue_sync(GitRepository.objects.get(pk=int(sys.argv[2])))
print(json.dumps({"execution": str(execution.id), "queued": execution.queued, "modules": sorted(sys.modules)}))
"""

WORKER_SIDE = """
import json

import django

django.setup()
from executor_project.celery import app

app.loader.import_default_modules()  # what a worker does when it starts
print(json.dumps(sorted(app.tasks)))
"""


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run([sys.executable, "-c", code, *args], cwd=settings.BASE_DIR, capture_output=True,
                               text=True, timeout=120, env={**os.environ, **(env or {})})  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip().splitlines()[-1]


def this_tests_database() -> str:
    """DATABASE_URL of the database pytest-django created (test_<name>)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + connection.settings_dict["NAME"]).geturl()


def messages(client: redis.Redis, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of each message waiting in `queue`, as kombu's Redis transport keeps them."""
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], args))
    return found


@pytest.mark.django_db(transaction=True)  # committed: the other process reads the package and the repository
def test_the_web_side_publishes_a_run_and_a_sync_without_loading_the_worker(tmp_path):
    package = make_package("alice_reports", files={"main.py": "print(1)"})
    repository = GitRepository.objects.create(project=Project.objects.create(name="Sales"), url="https://x/fx.git")

    # A Redis of its own: an end-to-end test's worker, still running in this session, would take the messages.
    with private_redis(tmp_path) as broker_url:
        env = {"DATABASE_URL": this_tests_database(), "REDIS_URL": broker_url}
        report = json.loads(run_python(WEB_SIDE, str(package.pk), str(repository.pk), env=env))
        broker = redis.Redis.from_url(broker_url)
        queued = {lane: messages(broker, lane) for lane in ("default", "maintenance")}
        marked = broker.exists(queueing.MARKER_PREFIX + report["execution"])

    loaded = set(report["modules"])
    assert report["queued"] is True
    assert not {"workers.tasks", "workers.runner", "workers.sandbox", "dulwich"} & loaded
    assert "executions.admin" in loaded and "packages.git_admin" in loaded  # the web side was really there
    assert queued == {
        "default": [("executor.run_execution", [report["execution"]])],
        "maintenance": [("executor.sync_repository", [repository.pk])],
    }
    assert marked


def test_a_worker_finds_every_task_the_code_publishes_or_schedules_by_name():
    published = {queueing.RUN_TASK, git_webhook.SYNC_TASK, git_webhook.SYNC_ADOPTING_TASK, notifications.SEND_TASK}
    scheduled = {schedules.TICK_TASK, saved_runs.SAVED_RUN_TASK, later_runs.LATER_RUN_TASK}
    periodic = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    registered = set(json.loads(run_python(WORKER_SIDE)))

    assert published | scheduled | periodic <= registered
    assert {name for name in registered if name.startswith("executor.")} == published | scheduled | periodic
