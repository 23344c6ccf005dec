"""Attacks through Git sync and import_package (README: Security model, Git repositories), performed for real.

The attacker pushes to one synced repository, or edits a repository's settings in the admin. Every test makes a
real repository on disk (tests/git_repos.py), syncs it against PostgreSQL, and checks both that the attack failed
with a clear message and that nothing leaked or changed: the server's files, another project's package and its
secret, the stored token, the internal network.
"""

import base64
import os
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.urls import reverse

from packages.git_credentials import regenerate_deploy_key, set_secret_field
from packages.git_sync import sync_repository
from packages.git_urls import UnsafeGitUrl, check_url
from packages.models import GitAuth, GitRepository, GitSyncStatus, Package, Project, Script
from packages.tasks import sync_repository_adopting
from tests.factories import add_secret, make_package
from tests.git_repos import GITLINK, SYMLINK, FxRepository, HttpsGitServer, fake_dns, fx_package

pytestmark = pytest.mark.django_db

PUBLIC_ADDRESS = "140.82.112.3"  # a public address for names the test resolves itself (no DNS in tests)
TOKEN = "tok-3xf1ltr4t10n-c4n4ry"


@pytest.fixture
def local_allowed(settings):
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True


@pytest.fixture
def ops():
    return Project.objects.create(name="Ops")


@pytest.fixture
def server_file(tmp_path) -> Path:
    """Stands for the server's Fernet key file: bytes that must never reach a script."""
    path = tmp_path / "data" / "fernet.key"
    path.parent.mkdir()
    path.write_text("FERNET-KEY-CANARY-5b1e9f0c")
    return path


def all_script_bytes() -> bytes:
    return b"\n".join(bytes(content) for content in Script.objects.values_list("content", flat=True))


def script_names(package_name: str) -> list[str]:
    return sorted(Package.objects.get(package_name=package_name).scripts.values_list("file_name", flat=True))


def server_secrets(server_file: Path) -> list[bytes]:
    """What the symlinks point at: /etc/shadow's first line, this process's environment, the key file."""
    return [Path("/etc/shadow").read_bytes().split(b"\n")[0], os.environ["SECRET_KEY"].encode(),
            os.environ["EXECUTOR_FERNET_KEYS"].encode(), server_file.read_bytes()]  # fmt: skip


# --- 1. symlinks, submodules, special files -------------------------------------------------------------------


def test_symlinks_in_a_synced_repository_import_nothing_from_the_server(tmp_path, local_allowed, ops, server_file,
                                                                         capsys):  # fmt: skip
    remote = FxRepository(tmp_path / "evil")
    remote.commit(fx_package("orders"))
    remote.commit_entries({
        "orders/shadow.txt": (SYMLINK, "/etc/shadow"),
        "orders/env.txt": (SYMLINK, "/proc/self/environ"),
        "orders/key": (SYMLINK, str(server_file)),
        "data_dir": (SYMLINK, str(server_file.parent)),  # a top-level "package directory" that is the host's
        "host_etc": (SYMLINK, "/etc"),
    })  # fmt: skip

    call_command("sync_repository", remote.url, "--project", "Ops")

    repository = GitRepository.objects.get()
    assert repository.status == GitSyncStatus.OK and repository.last_report["created"] == ["orders"]
    assert repository.last_report["skipped"] == {
        ".": ["data_dir: symbolic links are not imported", "host_etc: symbolic links are not imported"],
        "orders": ["env.txt: symbolic links are not imported", "key: symbolic links are not imported",
                   "shadow.txt: symbolic links are not imported"],
    }  # fmt: skip
    out = capsys.readouterr().out
    assert "not imported: orders/shadow.txt: symbolic links are not imported" in out
    assert "not imported: data_dir: symbolic links are not imported" in out
    assert script_names("orders") == ["app.py", "config.json", "manifest.json", "parameters.json"]
    assert not Package.objects.filter(package_name__in=["data_dir", "host_etc"]).exists()
    imported = all_script_bytes()
    assert imported and not [leak for leak in server_secrets(server_file) if leak in imported]


def test_the_repository_page_lists_what_was_not_imported(tmp_path, local_allowed, ops, admin_client):
    remote = FxRepository(tmp_path / "evil")
    remote.commit(fx_package("orders"))
    remote.commit_entries({"orders/shadow.txt": (SYMLINK, "/etc/shadow")})
    repository = GitRepository.objects.create(project=ops, url=remote.url)
    sync_repository(repository)

    page = admin_client.get(reverse("admin:packages_gitrepository_change", args=[repository.pk])).content.decode()

    assert "<strong>Not imported</strong>: orders/shadow.txt: symbolic links are not imported" in page


def test_submodules_and_nested_directories_are_reported_not_imported(tmp_path, local_allowed, ops):
    remote = FxRepository(tmp_path / "evil")
    remote.commit({**fx_package("orders"), "orders/lib/helper.py": "print('nested')"})
    remote.commit_entries({"orders/vendor": (GITLINK, "a" * 40), "libs": (GITLINK, "b" * 40),
                           "orders/run.sh": (0o100664, "echo group-writable mode")})  # fmt: skip
    repository = GitRepository.objects.create(project=ops, url=remote.url)

    report = sync_repository(repository)

    assert report.ok and report.created == ["orders"]
    assert report.skipped == {
        ".": ["libs: submodules are not imported"],
        "orders": ["lib: directories inside a package are not imported",
                   "run.sh: file mode 100664 is not imported (only 100644 and 100755)",
                   "vendor: submodules are not imported"],
    }  # fmt: skip
    assert script_names("orders") == ["app.py", "config.json", "manifest.json", "parameters.json"]
    assert not Package.objects.filter(package_name="libs").exists()


def test_import_package_reads_only_regular_files_and_lists_the_rest(tmp_path, server_file, capsys):
    directory = tmp_path / "orders"
    directory.mkdir()
    (directory / "app.py").write_text("print('mine')")
    (directory / "shadow.txt").symlink_to("/etc/shadow")
    (directory / "env.txt").symlink_to("/proc/self/environ")
    (directory / "key").symlink_to(server_file)
    (directory / "host_dir").symlink_to(server_file.parent)
    (directory / "lib").mkdir()
    os.mkfifo(directory / "pipe")  # opening it for reading would hang an importer that trusts is_file()

    call_command("import_package", str(directory), "--project", "Ops")

    out = capsys.readouterr().out
    for line in ("env.txt: symbolic links are not imported", "host_dir: symbolic links are not imported",
                 "key: symbolic links are not imported", "lib: directories inside a package are not imported",
                 "pipe: special files (devices, pipes, sockets) are not imported",
                 "shadow.txt: symbolic links are not imported"):  # fmt: skip
        assert f"  not imported: {line}\n" in out
    assert script_names("orders") == ["app.py"]
    assert not [leak for leak in server_secrets(server_file) if leak in all_script_bytes()]


# --- 2. package takeover --------------------------------------------------------------------------------------


@pytest.fixture
def victims():
    """Sales' hand-uploaded `orders` with a secret, and Finance's `billing` from Finance's own repository."""
    sales, finance = Project.objects.create(name="Sales"), Project.objects.create(name="Finance")
    orders = make_package("orders", {"app.py": "print('the real orders job')"}, project=sales)
    add_secret(orders, name="ERP_PASSWORD", value="victim-secret-value")
    finance_repository = GitRepository.objects.create(project=finance, url="https://git.example.com/finance/x.git")
    make_package("billing", {"app.py": "print('the real billing job')"}, project=finance,
                 git_repository=finance_repository, source_commit="f" * 40)  # fmt: skip
    return Package.objects.filter(package_name__in=["orders", "billing"])


@pytest.fixture
def attacker_repository(tmp_path, local_allowed, ops):
    steal = "import json, sys; print(json.loads(sys.argv[1])['secrets'])"
    remote = FxRepository(tmp_path / "attacker")
    remote.commit({**fx_package("orders", app=steal), **fx_package("billing", app=steal), **fx_package("tools")})
    return GitRepository.objects.create(project=ops, url=remote.url)


def snapshot(packages) -> list[tuple]:
    """Everything about the victims that a takeover would change."""
    return [(p.package_name, p.project.name, p.git_repository_id, p.source_commit, p.active,
             [(s.file_name, bytes(s.content)) for s in p.scripts.all()],
             [(s.name, s.reveal()) for s in p.secrets.all()]) for p in packages.order_by("package_name")]  # fmt: skip


def test_a_repository_cannot_take_over_packages_it_does_not_own(victims, attacker_repository, admin_client):
    before = snapshot(victims)

    report = sync_repository(attacker_repository)

    assert report.created == ["tools"] and not report.updated and not report.failed
    assert report.conflicts == {
        "billing": "a package of that name exists and does not belong to this repository (from another Git "
        "repository, project Finance); adopt it explicitly to let this repository manage it",
        "orders": "a package of that name exists and does not belong to this repository (uploaded by hand, project "
        "Sales); adopt it explicitly to let this repository manage it",
    }  # fmt: skip
    assert snapshot(victims) == before
    assert b"secrets" not in b"".join(bytes(s.content) for p in victims for s in p.scripts.all())
    attacker_repository.refresh_from_db()
    assert attacker_repository.status == GitSyncStatus.PARTIAL
    assert "orders: a package of that name exists" in attacker_repository.last_error
    page = admin_client.get(reverse("admin:packages_gitrepository_change", args=[attacker_repository.pk]))
    assert "<strong>Left alone: orders</strong>: a package of that name exists" in page.content.decode()
    sync_repository(attacker_repository)  # and again: still nothing, and nothing of theirs is deactivated
    assert snapshot(victims) == before


def test_the_command_adopts_only_the_packages_it_is_told_to(victims, attacker_repository, capsys):
    with pytest.raises(CommandError, match="1 package directory failed or left alone"):
        call_command("sync_repository", attacker_repository.url, "--project", "Ops", "--adopt", "orders")

    out, err = capsys.readouterr()
    assert "note: orders: adopted (uploaded by hand, project Sales)" in out
    assert "note: orders: moved from project Sales to project Ops" in out
    assert "left alone: billing: a package of that name exists" in err and "(--adopt billing)" in err
    orders = Package.objects.get(package_name="orders")
    assert (orders.project.name, orders.git_repository) == ("Ops", attacker_repository)
    assert b"argv[1]" in bytes(orders.scripts.get(file_name="app.py").content)
    billing = Package.objects.get(package_name="billing")
    assert billing.project.name == "Finance" and billing.git_repository != attacker_repository


def test_the_admin_adopts_what_the_last_sync_left_alone_on_a_worker_and_only_for_superusers(
    victims, attacker_repository, admin_client, client, enqueued
):
    sync_repository(attacker_repository)
    changelist = reverse("admin:packages_gitrepository_changelist")
    action = {"action": "sync_adopting", "_selected_action": [attacker_repository.pk]}

    response = admin_client.post(changelist, action, follow=True)
    staff = User.objects.create_user("maintainer", password="pw", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__endswith="gitrepository"))
    client.force_login(staff)
    assert "sync_adopting" not in client.get(changelist).content.decode()
    client.post(changelist, action)

    assert f"Sync of {attacker_repository} queued, adopting billing, orders" in response.content.decode()
    [adopting] = enqueued.of("executor.sync_repository_adopting")
    assert (adopting.args, adopting.queue) == ([attacker_repository.pk, ["billing", "orders"]], "maintenance")
    assert Package.objects.get(package_name="orders").project.name == "Sales"  # nothing ran in the request
    sync_repository_adopting(*adopting.args)  # what the worker does
    assert set(Package.objects.filter(git_repository=attacker_repository).values_list("package_name", flat=True)) == {
        "billing", "orders", "tools"}  # fmt: skip


def test_import_package_over_a_package_from_git_is_refused_unless_detached(tmp_path, local_allowed, ops, capsys):
    remote = FxRepository(tmp_path / "fx")
    remote.commit(fx_package("orders"))
    repository = GitRepository.objects.create(project=ops, url=remote.url)
    sync_repository(repository)
    directory = tmp_path / "orders"
    directory.mkdir()
    (directory / "app.py").write_text("print('by hand')")

    with pytest.raises(CommandError) as refused:
        call_command("import_package", str(directory))

    assert str(refused.value) == (f"orders comes from Git repository {repository}; change it there, or pass --detach "
                                  "to take it out of the repository")  # fmt: skip
    assert script_names("orders") == ["app.py", "config.json", "manifest.json", "parameters.json"]
    call_command("import_package", str(directory), "--detach")
    assert f"orders: detached from Git repository {repository}" in capsys.readouterr().out
    orders = Package.objects.get(package_name="orders")
    assert (orders.git_repository, orders.source_commit, script_names("orders")) == (None, "", ["app.py"])
    assert "orders" in sync_repository(repository).conflicts  # the repository no longer owns it


def test_import_package_never_moves_a_package_to_another_project(tmp_path, victims):
    before = snapshot(victims)
    directory = tmp_path / "orders"
    directory.mkdir()
    (directory / "app.py").write_text("print('moved')")

    with pytest.raises(CommandError, match="orders belongs to project Sales, not Ops: an import does not move a "
                                           "package between projects"):  # fmt: skip
        call_command("import_package", str(directory), "--project", "Ops")

    assert snapshot(victims) == before and not Project.objects.filter(name="Ops").exists()
    make_package("loose")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "app.py").write_text("")
    call_command("import_package", str(tmp_path / "loose"), "--project", "Ops")
    assert Package.objects.get(package_name="loose").project.name == "Ops"  # one without a project may get one


# --- 3. the stored token is bound to its host -----------------------------------------------------------------


@pytest.fixture
def git_server(tmp_path, monkeypatch, settings):
    """A real HTTPS Git server on 127.0.0.1 (trusted by this process, allowed by the URL policy) recording every
    request and its Authorization header."""
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = ["127.0.0.1"]
    remote = FxRepository(tmp_path / "served")
    remote.commit(fx_package("orders"))
    with HttpsGitServer(remote, tmp_path / "tls") as server:
        server.trust(monkeypatch)
        yield server


@pytest.fixture
def token_repository(ops, monkeypatch):
    """A repository whose token was given for git.example.com (saved as the admin saves it)."""
    fake_dns(monkeypatch, {"git.example.com": PUBLIC_ADDRESS})
    repository = GitRepository(project=ops, url="https://git.example.com/acme/fx-packages.git",
                               auth=GitAuth.HTTPS_TOKEN)  # fmt: skip
    set_secret_field(repository, "https_token", TOKEN)
    repository.save()
    assert repository.credentials_host == "git.example.com"
    return repository


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def change_form(repository: GitRepository, **changes) -> dict:
    data = {"project": repository.project_id, "url": repository.url, "branch": repository.branch,
            "auth": repository.auth, "https_token": "", "webhook_secret": ""}  # fmt: skip
    return {**data, **changes}


def test_the_admin_does_not_keep_a_token_for_a_url_on_another_host(token_repository, git_server, admin_client):
    page = reverse("admin:packages_gitrepository_change", args=[token_repository.pk])
    stored = GitRepository.objects.values("url", "https_token_encrypted", "credentials_host").get()

    refused = admin_client.post(page, change_form(token_repository, url=git_server.url))

    assert refused.status_code == 200
    assert (f"The stored token was given for git.example.com and is never sent to another host: enter the token for "
            f"127.0.0.1:{git_server.port}.") in refused.content.decode()  # fmt: skip
    assert GitRepository.objects.values("url", "https_token_encrypted", "credentials_host").get() == stored

    dropped = admin_client.post(page, change_form(token_repository, url=git_server.url, auth=GitAuth.NONE),
                                follow=True)  # fmt: skip

    assert (f"The URL now points to 127.0.0.1:{git_server.port}: the HTTPS token given for git.example.com was "
            f"dropped: enter the token for 127.0.0.1:{git_server.port}.") in dropped.content.decode()  # fmt: skip
    repository = GitRepository.objects.get()
    assert (repository.url, repository.https_token_encrypted, repository.credentials_host) == (git_server.url, "", "")
    assert TOKEN not in dropped.content.decode() and git_server.requests == []


def test_a_sync_never_sends_the_token_to_another_host(token_repository, git_server, admin_client):
    GitRepository.objects.filter(pk=token_repository.pk).update(url=git_server.url)  # changed behind the admin's back
    token_repository.refresh_from_db()

    report = sync_repository(token_repository)

    assert report.error == (f"the stored token was given for host git.example.com, not 127.0.0.1:{git_server.port}: "
                            f"enter the token again for 127.0.0.1:{git_server.port}")  # fmt: skip
    assert git_server.requests == [] and not Package.objects.exists()

    # Entered again for this host, it is sent, and only here: the recording server would have seen a leak.
    page = reverse("admin:packages_gitrepository_change", args=[token_repository.pk])
    admin_client.post(page, change_form(token_repository, url=git_server.url, https_token="tok-for-this-host"))
    assert sync_repository(GitRepository.objects.get()).created == ["orders"]
    assert {auth for _, auth in git_server.requests} == {basic("tok-for-this-host")}


def test_a_redirect_to_another_host_is_refused_and_gets_no_token(git_server, tmp_path, ops, monkeypatch, settings):
    with HttpsGitServer(None, tmp_path / "tls", redirect_to=git_server.url) as redirecting:
        repository = GitRepository(project=ops, url=redirecting.url.replace("127.0.0.1", "localhost"),
                                   auth=GitAuth.HTTPS_TOKEN)  # fmt: skip
        set_secret_field(repository, "https_token", TOKEN)
        repository.save()
        redirecting.trust(monkeypatch)
        settings.EXECUTOR_GIT_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

        report = sync_repository(repository)

    assert report.error.startswith(
        f"localhost:{redirecting.port} answered with a redirect to https://127.0.0.1:"
        f"{git_server.port}/fx-packages.git/info/refs: Git sync does not follow redirects"
    )
    assert [auth for _, auth in redirecting.requests] == [basic(TOKEN)]  # sent to its own host only
    assert git_server.requests == [] and not Package.objects.exists()


# --- 4. the server's own disk and network ---------------------------------------------------------------------


@pytest.mark.parametrize("url, message", [
    ("https://127.0.0.1/acme/x.git", "127.0.0.1 is a loopback address: the server does not fetch from its own "
     "network unless the host is listed in EXECUTOR_GIT_ALLOWED_HOSTS"),
    ("https://localhost/acme/x.git", "host localhost resolves to 127.0.0.1, which is a loopback address"),
    ("git@169.254.169.254:acme/x.git", "169.254.169.254 is a link-local address"),
    ("ssh://git@[::1]/acme/x.git", "::1 is a loopback address"),
    ("https://10.1.2.3/acme/x.git", "10.1.2.3 is a private address"),
    ("https://[::ffff:127.0.0.1]/acme/x.git", "is a loopback address"),
    ("http://git.example.com/acme/x.git", "plain http:// is not allowed"),
    ("git://git.example.com/acme/x.git", "git:// is not allowed"),
    ("file:///etc", "local paths and file:// URLs read the server's own disk and are turned off"),
    ("/srv/other-project/repo", "local paths and file:// URLs read the server's own disk and are turned off"),
    ("https://user:hunter2@git.example.com/acme/x.git", "a URL cannot hold a password"),
    ("https://git.example.com//127.0.0.1/x.git", "the URL names no repository path"),
    ("git@-oProxyCommand=touch /tmp/pwned:x.git", "a URL cannot contain spaces"),
])  # fmt: skip
def test_the_url_policy_refuses_internal_local_and_unencrypted_urls(url, message, monkeypatch):
    fake_dns(monkeypatch, {"git.example.com": PUBLIC_ADDRESS})
    with pytest.raises(UnsafeGitUrl) as refused:
        check_url(url)
    assert message in str(refused.value) and "hunter2" not in str(refused.value)


def test_the_url_policy_accepts_public_hosts_and_the_listed_internal_ones(monkeypatch, settings):
    fake_dns(monkeypatch, {"github.com": PUBLIC_ADDRESS, "git.internal": "10.1.2.3"})
    assert check_url("git@github.com:acme/x.git").authority == "github.com"
    assert check_url("https://github.com:8443/acme/x.git").authority == "github.com:8443"
    assert check_url("https://[2606:4700::1111]/acme/x.git").authority == "[2606:4700::1111]"
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = ["git.internal"]
    assert check_url("ssh://git@git.internal:2222/srv/x.git").kind == "ssh"


@pytest.mark.parametrize("url", ["https://127.0.0.1/acme/x.git", "https://localhost/acme/x.git",
                                 "http://git.example.com/acme/x.git", "file:///srv/repo"])  # fmt: skip
def test_the_admin_and_the_command_refuse_such_urls(url, admin_client, ops, monkeypatch):
    fake_dns(monkeypatch, {"git.example.com": PUBLIC_ADDRESS})
    response = admin_client.post(
        reverse("admin:packages_gitrepository_add"),
        {
            "project": ops.pk,
            "url": url,
            "branch": "main",
            "auth": GitAuth.NONE,
            "https_token": "",
            "webhook_secret": "",
        },
    )

    assert response.status_code == 200 and 'class="errorlist' in response.content.decode()
    with pytest.raises(CommandError, match="URL refused: "):
        call_command("sync_repository", url, "--project", "Ops")
    assert not GitRepository.objects.exists()


def test_a_url_that_became_internal_is_refused_at_sync_time(git_server, ops, monkeypatch, settings):
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = []
    answers = iter([PUBLIC_ADDRESS, "127.0.0.1"])
    fake_dns(monkeypatch, {"git.example.com": lambda: next(answers)})
    repository = GitRepository(project=ops, url=f"https://git.example.com:{git_server.port}/fx-packages.git")
    repository.full_clean()  # what the admin checks on save: public then
    repository.save()

    report = sync_repository(repository)  # the name points inside now

    assert report.error.startswith("the URL is not allowed: host git.example.com resolves to 127.0.0.1, which is a "
                                   "loopback address")  # fmt: skip
    assert git_server.requests == [] and not Package.objects.exists()


def test_a_name_that_resolves_elsewhere_when_connecting_is_caught_on_the_connection(git_server, ops, monkeypatch,
                                                                                   settings):  # fmt: skip
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = []
    answers = iter([PUBLIC_ADDRESS, "127.0.0.1"])  # the check sees a public address, the connection the loopback
    fake_dns(monkeypatch, {"rebind.example.com": lambda: next(answers)})
    repository = GitRepository(project=ops, url=f"https://rebind.example.com:{git_server.port}/fx-packages.git",
                               auth=GitAuth.HTTPS_TOKEN)  # fmt: skip
    set_secret_field(repository, "https_token", TOKEN)
    repository.save()

    report = sync_repository(repository)

    assert report.error == ("host rebind.example.com resolves to 127.0.0.1, which is a loopback address: the server "
                            "does not fetch from its own network unless the host is listed in "
                            "EXECUTOR_GIT_ALLOWED_HOSTS")  # fmt: skip
    assert git_server.requests == []  # not a byte of HTTP, so no token either


def test_ssh_connects_to_the_address_it_checked_not_to_a_second_answer(ops, monkeypatch):
    answers = iter([PUBLIC_ADDRESS, "127.0.0.1"])  # the URL check, then the address ssh would be given
    fake_dns(monkeypatch, {"git.example.com": lambda: next(answers)})
    repository = GitRepository(project=ops, url="git@git.example.com:acme/fx-packages.git", auth=GitAuth.DEPLOY_KEY)
    regenerate_deploy_key(repository)
    repository.save()

    with mock.patch("subprocess.Popen", side_effect=AssertionError("ssh was started")):
        report = sync_repository(repository)

    assert report.error.startswith("the URL is not allowed: host git.example.com resolves to 127.0.0.1, which is a "
                                   "loopback address")  # fmt: skip
    assert GitRepository.objects.get().ssh_known_hosts == ""


def test_a_local_repository_is_refused_at_sync_time_without_executor_git_allow_local(tmp_path, ops):
    remote = FxRepository(tmp_path / "other-project")
    remote.commit(fx_package("orders"))
    for url in (remote.url, str(remote.path)):
        repository = GitRepository.objects.create(project=ops, url=url)  # stored before the policy existed

        report = sync_repository(repository)

        assert report.error == ("the URL is not allowed: local paths and file:// URLs read the server's own disk and "
                                "are turned off (EXECUTOR_GIT_ALLOW_LOCAL)")  # fmt: skip
    assert not Package.objects.exists()


def test_the_admin_sync_now_queues_the_sync_and_fetches_nothing_in_the_request(admin_client, tmp_path, local_allowed,
                                                                              ops, enqueued):  # fmt: skip
    remote = FxRepository(tmp_path / "fx")
    remote.commit(fx_package("orders"))
    repository = GitRepository.objects.create(project=ops, url=remote.url)

    with mock.patch("packages.git_sync.sync_repository", side_effect=AssertionError("synced in the request")):
        changelist = reverse("admin:packages_gitrepository_changelist")
        response = admin_client.post(changelist, {"action": "sync_now", "_selected_action": [repository.pk]},
                                     follow=True)  # fmt: skip

    assert f"Sync of {repository} queued; the page shows the result when it ends." in response.content.decode()
    assert enqueued.of("executor.sync_repository") == [("executor.sync_repository", [repository.pk], "maintenance")]
    assert GitRepository.objects.get().status == GitSyncStatus.NEVER and not Package.objects.exists()
