"""Deploy keys for real: a repository served by an OpenSSH server on localhost that knows only the deploy key,
and the host key pinned per repository on the first sync.

Needs Debian's openssh-server (`.ci/run` installs it); without it these tests skip, or fail when
EXECUTOR_REQUIRE_SSHD=1 (as in CI).
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.urls import reverse

from packages.git_credentials import regenerate_deploy_key
from packages.git_sync import sync_repository
from packages.models import GitAuth, GitRepository, GitSyncStatus, Package, Project
from tests.git_repos import FxRepository, fx_package

pytestmark = pytest.mark.django_db
SSHD = Path("/usr/sbin/sshd")


@pytest.fixture(autouse=True)
def localhost_allowed(settings):
    """The test server listens on 127.0.0.1, which the URL policy refuses unless listed."""
    settings.EXECUTOR_GIT_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def ssh_server(tmp_path):
    """An sshd on a free localhost port; write the allowed public keys to `.authorized_keys`; `restart(new_host_key=
    True)` brings it back on the same port with another host key (a changed host, or someone in between)."""
    if not SSHD.exists():
        if os.environ.get("EXECUTOR_REQUIRE_SSHD") == "1":
            pytest.fail("no /usr/sbin/sshd (EXECUTOR_REQUIRE_SSHD=1): apt-get install openssh-server")
        pytest.skip("no /usr/sbin/sshd: apt-get install openssh-server")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    authorized = tmp_path / "authorized_keys"
    authorized.touch()
    server = SshServer(tmp_path, port, authorized)
    server.start()
    yield server
    server.stop()


class SshServer:
    def __init__(self, directory: Path, port: int, authorized_keys: Path):
        self.directory, self.port, self.authorized_keys = directory, port, authorized_keys
        self.process: subprocess.Popen | None = None
        self.host_key = directory / "host_key"

    def start(self) -> None:
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        config = self.directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
        )
        log = self.directory / "sshd.log"
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=open(log, "a"))
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", self.port)) != 0:
            assert time.monotonic() < deadline and self.process.poll() is None, log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self, *, new_host_key: bool) -> None:
        self.stop()
        if new_host_key:
            self.host_key.unlink()
            self.host_key.with_suffix(".pub").unlink()
        self.start()


def ssh_repository(ssh_server, tmp_path) -> GitRepository:
    remote = FxRepository(tmp_path / "fx-packages")
    remote.commit(fx_package("over_ssh"))
    user = os.environ.get("USER") or "root"
    repository = GitRepository(project=Project.objects.create(name="Ops"), auth=GitAuth.DEPLOY_KEY,
                               url=f"ssh://{user}@127.0.0.1:{ssh_server.port}{remote.path}")  # fmt: skip
    regenerate_deploy_key(repository)
    repository.save()
    return repository


def test_a_repository_syncs_over_ssh_with_its_deploy_key_and_pins_the_host_key(ssh_server, tmp_path):
    repository = ssh_repository(ssh_server, tmp_path)
    ssh_server.authorized_keys.write_text(repository.deploy_public_key + "\n")

    report = sync_repository(repository)

    assert report.ok and report.created == ["over_ssh"], report.error
    assert Package.objects.get(package_name="over_ssh").source_commit == report.commit
    repository.refresh_from_db()
    host_key = (tmp_path / "host_key.pub").read_text().split()[1]
    assert host_key in repository.ssh_known_hosts and repository.credentials_host == f"127.0.0.1:{ssh_server.port}"
    assert report.notes == [f"pinned the SSH host key of 127.0.0.1:{ssh_server.port} (first sync): later syncs "
                            "require it", "branch main: the repository's default branch (its HEAD)"]  # fmt: skip
    assert repository.branch == "main"  # saved without one: the remote's HEAD named it, over SSH too
    assert sync_repository(repository).ok  # the pinned key, checked strictly


def test_a_changed_host_key_is_refused_and_changes_nothing(ssh_server, tmp_path):
    repository = ssh_repository(ssh_server, tmp_path)
    ssh_server.authorized_keys.write_text(repository.deploy_public_key + "\n")
    first = sync_repository(repository)
    pinned = GitRepository.objects.get().ssh_known_hosts
    ssh_server.restart(new_host_key=True)  # same address and port, another key: a host in between

    report = sync_repository(repository)

    assert report.error.startswith(f"the SSH host key 127.0.0.1:{ssh_server.port} showed is not the one pinned at "
                                   "the first sync")  # fmt: skip
    repository.refresh_from_db()
    assert repository.status == GitSyncStatus.FAILED and repository.ssh_known_hosts == pinned
    assert Package.objects.get().source_commit == first.commit


def test_forgetting_the_pinned_key_trusts_the_new_one_at_the_next_sync(ssh_server, tmp_path, admin_client):
    repository = ssh_repository(ssh_server, tmp_path)
    ssh_server.authorized_keys.write_text(repository.deploy_public_key + "\n")
    assert sync_repository(repository).ok
    ssh_server.restart(new_host_key=True)
    assert sync_repository(repository).error

    admin_client.post(reverse("admin:packages_gitrepository_changelist"),
                      {"action": "forget_host_keys", "_selected_action": [repository.pk]})  # fmt: skip
    repository.refresh_from_db()
    assert repository.ssh_known_hosts == ""

    assert sync_repository(repository).ok
    assert (tmp_path / "host_key.pub").read_text().split()[1] in GitRepository.objects.get().ssh_known_hosts


def test_a_deploy_key_the_host_does_not_know_is_refused(ssh_server, tmp_path):
    repository = ssh_repository(ssh_server, tmp_path)  # its public key was never added to the server

    report = sync_repository(repository)

    assert "Permission denied" in report.error
    assert GitRepository.objects.get().status == GitSyncStatus.FAILED and not Package.objects.exists()
