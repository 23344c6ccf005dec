"""Git sync against repositories created on the fly (file:// URLs, no network), with PostgreSQL."""

import hashlib
import hmac
import json
import threading
import time

import psycopg2
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.models import ApiKey, Execution, TriggerType
from executions.services import trigger_execution
from packages.audit import AuditAction
from packages.encryption import decrypt
from packages.git_credentials import set_secret_field
from packages.git_sync import LOCK_NAMESPACE, sync_repository
from packages.models import (
    AuditEntry,
    GitAuth,
    GitRepository,
    GitSyncStatus,
    Package,
    Project,
    ProjectMembership,
    ProjectRole,
)
from packages.schedules import periodic_task_name
from tests.git_repos import FxRepository, HttpsGitServer, fake_dns, fx_package

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def local_repositories_allowed(settings):
    """These tests sync file:// repositories; production refuses them (tests/security/test_git.py)."""
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True


@pytest.fixture
def remote(tmp_path):
    repo = FxRepository(tmp_path / "fx-packages")
    repo.commit({**fx_package("orders_load", trigger_events=["sales.order_created"]), **fx_package("daily_report"),
                 "README.md": "# packages", "orders_load/secrets.json": json.dumps({"API_TOKEN": "t0k3n-value"})},
                message="first")  # fmt: skip
    return repo


@pytest.fixture
def repository(remote):
    return GitRepository.objects.create(project=Project.objects.create(name="Sales"), url=remote.url)


def test_the_first_sync_creates_a_package_per_directory(repository, remote):
    report = sync_repository(repository)

    assert report.ok and sorted(report.created) == ["daily_report", "orders_load"] and report.updated == []
    repository.refresh_from_db()
    assert repository.status == GitSyncStatus.OK and repository.current_commit == report.commit
    assert repository.branches == ["main"] and repository.last_sync_at is not None
    orders = Package.objects.get(package_name="orders_load")
    assert (orders.git_repository, orders.source_commit, orders.project.name) == (repository, report.commit, "Sales")
    assert sorted(orders.scripts.values_list("file_name", flat=True)) == [
        "app.py",
        "config.json",
        "manifest.json",
        "parameters.json",
    ]  # fmt: skip  (secrets.json is not kept)
    assert orders.secrets.get().reveal() == "t0k3n-value"
    assert list(orders.trigger_event_types.values_list("name", flat=True)) == ["sales.order_created"]
    assert PeriodicTask.objects.get(name=periodic_task_name(orders.pk)).crontab.minute == "20"
    assert orders.has_run_form and not Package.objects.filter(package_name="README.md").exists()


def test_a_sync_after_a_push_updates_the_packages(repository, remote):
    sync_repository(repository)
    second = remote.commit({"daily_report/app.py": "print('v2')"}, message="v2")

    report = sync_repository(repository)

    assert sorted(report.updated) == ["daily_report", "orders_load"] and report.created == []
    daily = Package.objects.get(package_name="daily_report")
    assert bytes(daily.scripts.get(file_name="app.py").content) == b"print('v2')"
    assert daily.source_commit == second == report.commit


def test_switching_branch_syncs_that_branch_and_an_unknown_branch_changes_nothing(repository, remote):
    remote.branch("dev")
    remote.checkout("dev")
    remote.commit({"daily_report/app.py": "print('dev')"}, message="on dev")
    remote.checkout("main")
    sync_repository(repository)

    repository.branch = "dev"
    dev = sync_repository(repository)
    assert (
        dev.ok
        and bytes(Package.objects.get(package_name="daily_report").scripts.get(file_name="app.py").content)
        == b"print('dev')"
    )  # noqa: E501

    repository.branch = "nope"
    missing = sync_repository(repository)
    assert missing.error == "branch 'nope' not found; the repository has: dev, main"
    repository.refresh_from_db()
    assert repository.status == GitSyncStatus.FAILED and repository.current_commit == dev.commit


def test_a_deleted_directory_deactivates_its_package_and_keeps_its_history(repository, remote, enqueued):
    sync_repository(repository)
    daily = Package.objects.get(package_name="daily_report")
    run = trigger_execution(daily, trigger_type=TriggerType.MANUAL)
    remote.commit({path: None for path in fx_package("daily_report")}, message="remove daily_report")

    report = sync_repository(repository)

    assert report.deactivated == ["daily_report"]
    daily.refresh_from_db()
    assert not daily.active and Execution.objects.filter(pk=run.pk).exists()
    assert not PeriodicTask.objects.get(name=periodic_task_name(daily.pk)).enabled
    remote.commit(fx_package("daily_report"), message="back")
    assert sync_repository(repository).updated and Package.objects.get(package_name="daily_report").active


def test_a_broken_directory_is_reported_and_the_others_still_sync(repository, remote):
    broken = fx_package("broken_pkg", schedule="61 * * * *")
    remote.commit({**broken, "daily_report/app.py": "print('v2')", "Bad Name/app.py": "print(1)"})

    report = sync_repository(repository)

    assert report.failed == {
        "Bad Name": "directory name 'Bad Name': Use lowercase letters, digits, '_' and '-' (starting with a letter or "
        "digit), like an FX package directory.",
        "broken_pkg": "manifest.json: schedule: minute: 61 is out of range 0-59.",
    }  # fmt: skip
    assert sorted(report.updated + report.created) == ["daily_report", "orders_load"]
    assert not Package.objects.filter(package_name="broken_pkg").exists()
    repository.refresh_from_db()
    assert repository.status == GitSyncStatus.PARTIAL and "broken_pkg: manifest.json" in repository.last_error


def test_a_repository_that_cannot_be_read_fails_with_its_reason(tmp_path):
    repository = GitRepository.objects.create(project=Project.objects.create(name="P"),
                                              url=(tmp_path / "missing").as_uri())  # fmt: skip
    report = sync_repository(repository)
    assert report.error.startswith(f"could not fetch {repository.url}: ")
    assert GitRepository.objects.get().status == GitSyncStatus.FAILED and not Package.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_syncs_of_one_repository_do_not_interleave(repository, remote):
    other = psycopg2.connect(**{k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"})
    other.autocommit = True
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, repository.pk])  # a sync in progress
    waiting = threading.Thread(target=sync_in_a_thread, args=[repository.pk])
    waiting.start()
    time.sleep(1)
    assert GitRepository.objects.get(pk=repository.pk).status == GitSyncStatus.NEVER  # still waiting its turn
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, repository.pk])
    waiting.join(timeout=30)
    other.close()
    assert GitRepository.objects.get(pk=repository.pk).status == GitSyncStatus.OK


def sync_in_a_thread(repository_id: int) -> None:
    try:
        sync_repository(GitRepository.objects.select_related("project").get(pk=repository_id))
    finally:
        connection.close()  # this thread's own connection, or the test database cannot be dropped


def test_sync_repository_command_adds_syncs_and_reports(remote, capsys):
    call_command("sync_repository", remote.url, "--project", "Sales")
    out = capsys.readouterr().out
    assert "Added" in out and "created: daily_report" in out and "created: orders_load" in out

    remote.commit(fx_package("bad_pkg", schedule="nope"))
    with pytest.raises(CommandError, match="1 package directory failed"):
        call_command("sync_repository", remote.url, "--project", "Sales")
    assert "failed: bad_pkg: manifest.json: schedule" in capsys.readouterr().err
    assert GitRepository.objects.count() == 1


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("proof, status", [
    (lambda body: {"X-Hub-Signature-256": sign("hook-secret", body)}, 202),  # GitHub
    (lambda body: {"X-Forgejo-Signature": hex_hmac("hook-secret", body)}, 202),  # Forgejo
    (lambda body: {"X-Gitea-Signature": hex_hmac("hook-secret", body)}, 202),  # Gitea
    (lambda body: {"X-Gitlab-Token": "hook-secret", "X-Gitlab-Event": "Push Hook"}, 202),  # GitLab
    (lambda body: {"X-Hub-Signature-256": sign("wrong", body)}, 403),
    (lambda body: {"X-Hub-Signature-256": hex_hmac("hook-secret", body)}, 403),  # GitHub's header wants sha256=
    (lambda body: {"X-Gitea-Signature": hex_hmac("hook-secret", b"another body")}, 403),
    (lambda body: {"X-Gitlab-Token": "hook-secre"}, 403),
    (lambda body: {"X-Gitlab-Token": "hook-secret "}, 403),
    (lambda body: {"X-Gitlab-Token": "h\u00f6\u00f6k", "X-Gitea-Signature": "\u00e9"}, 403),  # not ASCII: no 500
    (lambda body: {"X-Gitlab-Token": ""}, 403),
    (lambda body: {}, 403),
])  # fmt: skip
def test_push_webhook_takes_each_hosts_proof_of_the_secret(client, repository, proof, status, enqueued):
    set_secret_field(repository, "webhook_secret", "hook-secret")
    repository.save()
    body = json.dumps({"ref": "refs/heads/main"}).encode()

    response = client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                           headers=proof(body))  # fmt: skip

    assert response.status_code == status
    assert enqueued == ([("executor.sync_repository", [repository.pk], "maintenance")] if status == 202 else [])


def test_push_webhook_with_no_secret_set_takes_no_proof(client, repository, enqueued):
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    for proof in ({"X-Hub-Signature-256": sign("", body)}, {"X-Gitea-Signature": hex_hmac("", body)},
                  {"X-Gitlab-Token": ""}):  # fmt: skip
        response = client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                               headers=proof)  # fmt: skip
        assert response.status_code == 403
    assert not enqueued


def test_push_webhook_ignores_other_branches_and_unknown_repositories(client, repository, enqueued):
    set_secret_field(repository, "webhook_secret", "s")
    repository.save()
    body = json.dumps({"ref": "refs/heads/feature"}).encode()

    def push():
        return client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                           headers={"X-Hub-Signature-256": sign("s", body)})  # fmt: skip

    assert push().status_code == 202  # no branch yet: the sync learns the default branch, whichever was pushed
    enqueued.clear()
    sync_repository(repository)  # now the repository follows main, the remote's HEAD
    assert push().json() == {"status": "ignored: a push to refs/heads/feature, not to main"}
    assert not enqueued
    assert client.post(reverse("git_webhook", args=[999]), b"{}", content_type="application/json").status_code == 404


def test_sync_now_api_queues_a_sync(client, repository, enqueued):
    key = ApiKey.issue("ci")[1]
    response = client.post(f"/fx/git/repositories/{repository.pk}/sync", headers={"X-API-KEY": key})
    assert response.status_code == 202 and response.json()["status"] == "never"
    assert enqueued == [("executor.sync_repository", [repository.pk], "maintenance")]
    assert (
        client.get(f"/fx/git/repositories/{repository.pk}", headers={"X-API-KEY": key}).json()["url"] == repository.url
    )
    assert client.post("/fx/git/repositories/1/sync").status_code == 401


def test_the_admin_generates_a_deploy_key_and_never_shows_secrets(admin_client, monkeypatch):
    fake_dns(monkeypatch, {"github.com": "140.82.112.3"})
    project = Project.objects.create(name="Sales")
    response = admin_client.post(reverse("admin:packages_gitrepository_add"), {
        "project": project.pk, "url": "git@github.com:acme/fx-packages.git", "branch": "main",
        "auth": GitAuth.DEPLOY_KEY, "https_token": "", "webhook_secret": "whsec-123456",
    })  # fmt: skip
    assert response.status_code == 302
    repository = GitRepository.objects.get()
    assert repository.deploy_public_key.startswith("ssh-ed25519 ")
    assert decrypt(repository.deploy_private_key_encrypted).startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    page = admin_client.get(reverse("admin:packages_gitrepository_change", args=[repository.pk])).content.decode()
    assert repository.deploy_public_key in page and f"/git/webhook/{repository.pk}" in page
    assert "OPENSSH PRIVATE KEY" not in page and "whsec-123456" not in page
    assert decrypt(repository.webhook_secret_encrypted) == "whsec-123456"

    admin_client.post(reverse("admin:packages_gitrepository_changelist"),
                      {"action": "regenerate_keys", "_selected_action": [repository.pk]})  # fmt: skip
    assert GitRepository.objects.get().deploy_public_key != repository.deploy_public_key
    assert AuditEntry.objects.filter(action=AuditAction.REGENERATE_KEYS, object_id=str(repository.pk)).exists()


def test_the_admin_sync_now_action_queues_a_sync_and_the_page_shows_its_report(admin_client, repository, enqueued):
    response = admin_client.post(
        reverse("admin:packages_gitrepository_changelist"),
        {"action": "sync_now", "_selected_action": [repository.pk]},
        follow=True,
    )
    assert f"Sync of {repository} queued; the page shows the result when it ends." in response.content.decode()
    assert enqueued == [("executor.sync_repository", [repository.pk], "maintenance")]

    sync_repository(repository)  # what the worker does with the message
    page = admin_client.get(reverse("admin:packages_gitrepository_change", args=[repository.pk])).content.decode()
    assert "<strong>Created</strong>: daily_report, orders_load" in page


def test_the_package_page_shows_its_repository_and_commit(admin_client, repository):
    report = sync_repository(repository)
    package = Package.objects.get(package_name="daily_report")
    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    assert report.commit[:12] in page and repository.url in page


# The admin and the role table


@pytest.fixture
def two_repositories(repository, django_user_model, client):
    """Sales' repository (alice maintains Sales) and HR's (alice only views HR); alice is logged in."""
    hr_repository = GitRepository.objects.create(project=Project.objects.create(name="HR"), url=repository.url)
    alice = django_user_model.objects.create_user("alice", is_staff=True)
    ProjectMembership.objects.create(project=repository.project, user=alice, role=ProjectRole.MAINTAINER)
    ProjectMembership.objects.create(project=hr_repository.project, user=alice, role=ProjectRole.VIEWER)
    client.force_login(alice)
    return repository, hr_repository


def test_sync_now_syncs_only_the_repositories_the_user_maintains_and_names_the_others(client, two_repositories,
                                                                                     enqueued):  # fmt: skip
    sales_repository, hr_repository = two_repositories
    response = client.post(reverse("admin:packages_gitrepository_changelist"),
                           {"action": "sync_now", "_selected_action": [sales_repository.pk, hr_repository.pk]},
                           follow=True)  # fmt: skip

    assert enqueued == [("executor.sync_repository", [sales_repository.pk], "maintenance")]
    page = response.content.decode()
    assert f"Skipped (changing them needs the maintainer role in their project): {hr_repository}" in page
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.object_id, entry.user.username) == (AuditAction.SYNC, str(sales_repository.pk), "alice")


def test_regenerating_deploy_keys_skips_repositories_the_user_only_views(client, two_repositories):
    sales_repository, hr_repository = two_repositories
    for repository in two_repositories:
        repository.deploy_public_key = "ssh-ed25519 old"
        repository.save()

    client.post(reverse("admin:packages_gitrepository_changelist"),
                {"action": "regenerate_keys", "_selected_action": [sales_repository.pk, hr_repository.pk]})  # fmt: skip

    assert GitRepository.objects.get(pk=sales_repository.pk).deploy_public_key != "ssh-ed25519 old"
    assert GitRepository.objects.get(pk=hr_repository.pk).deploy_public_key == "ssh-ed25519 old"
    assert list(AuditEntry.objects.values_list("action", "project")) == [
        (AuditAction.REGENERATE_KEYS, sales_repository.project_id)
    ]


@pytest.mark.parametrize("action", ["sync_now", "regenerate_keys", "forget_host_keys", "sync_adopting"])
def test_a_viewer_gets_no_repository_action(client, repository, django_user_model, action, enqueued):
    viewer = django_user_model.objects.create_user("vic", is_staff=True)
    ProjectMembership.objects.create(project=repository.project, user=viewer, role=ProjectRole.VIEWER)
    repository.last_report = {"conflicts": {"orders": "uploaded by hand"}}
    repository.save()
    client.force_login(viewer)
    before = GitRepository.objects.values().get()

    client.post(reverse("admin:packages_gitrepository_changelist"),
                {"action": action, "_selected_action": [repository.pk]})  # fmt: skip

    assert not enqueued  # neither a sync nor an adopting one
    assert GitRepository.objects.values().get() == before and not AuditEntry.objects.exists()


def test_adopting_stays_superuser_only_even_for_owners(client, repository, django_user_model, enqueued):
    owner = django_user_model.objects.create_user("olga", is_staff=True)
    ProjectMembership.objects.create(project=repository.project, user=owner, role=ProjectRole.OWNER)
    repository.last_report = {"conflicts": {"orders": "uploaded by hand"}}
    repository.save()
    client.force_login(owner)

    client.post(reverse("admin:packages_gitrepository_changelist"),
                {"action": "sync_adopting", "_selected_action": [repository.pk]})  # fmt: skip

    assert not enqueued.of("executor.sync_repository_adopting")


def test_another_projects_repository_is_not_there(client, two_repositories):
    sales_repository, _ = two_repositories
    other = GitRepository.objects.create(
        project=Project.objects.create(name="Operations"), url="https://example.com/x.git"
    )

    listing = client.get(reverse("admin:packages_gitrepository_changelist")).content.decode()

    assert "example.com" not in listing and "Operations" not in listing
    assert client.get(reverse("admin:packages_gitrepository_change", args=[other.pk])).status_code == 404
    add_page = client.get(reverse("admin:packages_gitrepository_add")).content.decode()
    assert ">Sales</option>" in add_page and ">HR</option>" not in add_page and ">Operations</option>" not in add_page


def test_sync_repository_without_a_branch_follows_the_remotes_default_branch(remote, capsys):
    remote.branch("trunk")
    remote.checkout("trunk")  # HEAD now names trunk; main stays behind
    remote.commit(fx_package("trunk_only"), message="on trunk")

    call_command("sync_repository", remote.url, "--project", "Sales")

    assert "note: branch trunk: the repository's default branch (its HEAD)" in capsys.readouterr().out
    repository = GitRepository.objects.get()
    assert repository.branch == "trunk" and repository.branches == ["main", "trunk"]
    assert Package.objects.filter(package_name="trunk_only", active=True).exists()
    remote.checkout("main")  # the remote's default changes: the repository stays on the branch it recorded
    assert sync_repository(repository).ok and repository.branch == "trunk"


def test_a_default_branch_name_longer_than_a_branch_may_be_is_refused_not_stored(remote):
    long_name = "b" * 201  # the remote chooses its HEAD's name; the field holds 200 characters
    remote.branch(long_name)
    remote.checkout(long_name)

    with pytest.raises(CommandError, match="default branch name is too long"):
        call_command("sync_repository", remote.url, "--project", "Sales")

    assert not GitRepository.objects.filter(branch=long_name).exists()


def test_over_https_the_default_branch_is_the_one_the_server_advertises(remote, tmp_path, monkeypatch, settings):
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = ["127.0.0.1"]
    remote.branch("trunk")
    remote.checkout("trunk")
    remote.commit(fx_package("trunk_only"), message="on trunk")
    with HttpsGitServer(remote, tmp_path / "tls") as server:
        server.trust(monkeypatch)
        repository = GitRepository.objects.create(project=Project.objects.create(name="Ops"), url=server.url)

        report = sync_repository(repository)

    assert report.ok and "trunk_only" in report.created
    repository.refresh_from_db()
    assert repository.branch == "trunk"
