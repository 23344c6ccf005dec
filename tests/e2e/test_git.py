"""Packages from a Git repository run on a real worker: by event, through their form, and pinned to their commit."""

import hashlib
import hmac
import json
import time

import pytest
from django.urls import reverse

from executions.events import IncomingEvent, dispatch
from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.git_credentials import set_secret_field
from packages.git_sync import sync_repository
from packages.models import GitRepository, Package, Project
from tests.git_repos import FxRepository, fx_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def local_repositories_allowed(settings):
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True


READS_ITS_CONFIG = """\
import json, sys
from ferris_cli.v2 import ApplicationConfigurator
args = json.loads(sys.argv[1])
print(ApplicationConfigurator.get(args["package_name"])["greeting"], args.get("region"), args.get("order_id"))
"""


@pytest.fixture
def repository(tmp_path):
    remote = FxRepository(tmp_path / "fx-packages")
    remote.commit({**fx_package("orders_load", app=READS_ITS_CONFIG, trigger_events=["sales.order_created"]),
                   **fx_package("pinned", app="print('v1')")})  # fmt: skip
    repository = GitRepository.objects.create(project=Project.objects.create(name="Sales"), url=remote.url)
    assert sync_repository(repository).ok
    repository.remote = remote
    return repository


def test_a_synced_package_runs_by_event_and_through_its_form(celery_worker, repository, admin_client):
    orders = Package.objects.get(package_name="orders_load")

    started = dispatch(IncomingEvent(type="sales.order_created", source="erp", data={"order_id": 42}))
    by_event = wait_until_finished(started.executions[0], timeout=60)
    admin_client.post(reverse("admin:packages_package_run", args=[orders.pk]), {"region": "us"})
    by_form = wait_until_finished(Execution.objects.get(package=orders, trigger_type=TriggerType.MANUAL), 60)

    outputs = [run.steps.get(file_name="app.py").stdout for run in (by_event, by_form)]
    assert outputs == ["hello from orders_load None 42\n", "hello from orders_load us None\n"]
    assert by_event.source_commit == by_form.source_commit == repository.current_commit


def test_a_run_keeps_the_code_it_started_with_across_a_sync(celery_worker, repository):
    remote = repository.remote
    remote.commit({"pinned/manifest.json": json.dumps({"execution_order": ["first.py", "app.py"]}),
                   "pinned/first.py": "import time; time.sleep(3)"})  # fmt: skip
    first_commit = sync_repository(repository).commit
    package = Package.objects.get(package_name="pinned")

    running = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    _wait_for_step(running, "first.py", StepStatus.RUNNING)
    second_commit = remote.commit({"pinned/app.py": "print('v2')"}, message="v2")
    assert sync_repository(repository).updated  # lands while first.py runs
    running = wait_until_finished(running, timeout=60)
    later = wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL), timeout=60)

    assert running.status == later.status == ExecutionStatus.COMPLETED
    assert running.steps.get(file_name="app.py").stdout == "v1\n" and running.source_commit == first_commit
    assert later.steps.get(file_name="app.py").stdout == "v2\n" and later.source_commit == second_commit


def _wait_for_step(execution: Execution, file_name: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not execution.steps.filter(file_name=file_name, status=status).exists():
        assert time.monotonic() < deadline, f"{file_name} never became {status}"
        time.sleep(0.1)


def test_a_signed_push_webhook_gets_the_repository_synced_by_a_worker(celery_worker, repository, client):
    set_secret_field(repository, "webhook_secret", "hook-secret")
    repository.save()
    pushed = repository.remote.commit({"pinned/app.py": "print('pushed')"}, message="push")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()

    response = client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                           headers={"X-Hub-Signature-256": signature})  # fmt: skip

    assert response.status_code == 202
    _wait_for_commit(repository, pushed, celery_worker)
    assert (
        bytes(Package.objects.get(package_name="pinned").scripts.get(file_name="app.py").content) == b"print('pushed')"
    )


def test_sync_now_in_the_admin_is_done_by_a_worker_and_the_page_shows_the_result(celery_worker, repository,
                                                                                admin_client):  # fmt: skip
    pushed = repository.remote.commit({**fx_package("added_later")}, message="a new package")

    response = admin_client.post(reverse("admin:packages_gitrepository_changelist"),
                                 {"action": "sync_now", "_selected_action": [repository.pk]}, follow=True)  # fmt: skip

    assert f"Sync of {repository} queued; the page shows the result when it ends." in response.content.decode()
    _wait_for_commit(repository, pushed, celery_worker)
    page = admin_client.get(reverse("admin:packages_gitrepository_change", args=[repository.pk])).content.decode()
    assert "<strong>Created</strong>: added_later" in page


def _wait_for_commit(repository: GitRepository, commit: str, worker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while GitRepository.objects.get(pk=repository.pk).current_commit != commit:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
