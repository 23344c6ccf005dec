"""Deploy keys for real: a repository served by an OpenSSH server on localhost that knows only the deploy key.

Needs Debian's openssh-server (`.ci/run` installs it); without it these tests skip, or fail when
EXECUTOR_REQUIRE_SSHD=1 (as in CI).
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from packages.git_credentials import regenerate_deploy_key
from packages.git_sync import sync_repository
from packages.models import GitAuth, GitRepository, GitSyncStatus, Package, Project
from tests.git_repos import FxRepository, fx_package

pytestmark = pytest.mark.django_db
SSHD = Path("/usr/sbin/sshd")


@pytest.fixture
def ssh_server(tmp_path, monkeypatch):
    """An sshd on a free localhost port; write the allowed public keys to `.authorized_keys`."""
    monkeypatch.setenv("HOME", str(tmp_path))  # a known_hosts of its own: each test's server has a new host key
    if not SSHD.exists():
        if os.environ.get("EXECUTOR_REQUIRE_SSHD") == "1":
            pytest.fail("no /usr/sbin/sshd (EXECUTOR_REQUIRE_SSHD=1): apt-get install openssh-server")
        pytest.skip("no /usr/sbin/sshd: apt-get install openssh-server")
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    authorized = tmp_path / "authorized_keys"
    authorized.touch()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host_key'}\nAuthorizedKeysFile {authorized}\n"
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {tmp_path / 'sshd.pid'}\n"
    )
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=open(tmp_path / "sshd.log", "w"))
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "sshd.log").read_text()
        time.sleep(0.1)
    server.port, server.authorized_keys = port, authorized
    yield server
    server.terminate()
    server.wait(timeout=10)


def ssh_repository(ssh_server, tmp_path) -> GitRepository:
    remote = FxRepository(tmp_path / "fx-packages")
    remote.commit(fx_package("over_ssh"))
    user = os.environ.get("USER") or "root"
    repository = GitRepository(project=Project.objects.create(name="Ops"), auth=GitAuth.DEPLOY_KEY,
                               url=f"ssh://{user}@127.0.0.1:{ssh_server.port}{remote.path}")  # fmt: skip
    regenerate_deploy_key(repository)
    repository.save()
    return repository


def test_a_repository_syncs_over_ssh_with_its_deploy_key(ssh_server, tmp_path):
    repository = ssh_repository(ssh_server, tmp_path)
    ssh_server.authorized_keys.write_text(repository.deploy_public_key + "\n")

    report = sync_repository(repository)

    assert report.ok and report.created == ["over_ssh"], report.error
    assert Package.objects.get(package_name="over_ssh").source_commit == report.commit


def test_a_deploy_key_the_host_does_not_know_is_refused(ssh_server, tmp_path):
    repository = ssh_repository(ssh_server, tmp_path)  # its public key was never added to the server

    report = sync_repository(repository)

    assert "Permission denied" in report.error
    assert GitRepository.objects.get().status == GitSyncStatus.FAILED and not Package.objects.exists()
