"""Git sync: a project's repository branch becomes packages, one per top-level directory (the FX layout).

Each sync clones the branch afresh (depth 1, dulwich) into a temporary directory, so any machine can sync with
nothing kept between syncs. Every top-level directory goes through the same import as `import_package`, each in
its own transaction: a broken directory is reported with its error and the others still sync. A package whose
directory disappeared is deactivated (its history stays). Two syncs of one repository never interleave: a
PostgreSQL advisory lock makes the second wait for the first.

Packages remember the commit they came from; a worker records that commit on each execution when it takes it
(workers/runner.py), and a run keeps the files it started with even if a sync lands meanwhile.
"""

import contextlib
import io
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.db import connection
from django.utils import timezone
from dulwich import porcelain

from .encryption import decrypt
from .importer import GitSource, PackageImportError, import_package_dir
from .models import GitAuth, GitRepository, GitSyncStatus, Package
from .schedules import sync_package_schedule

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x6578  # advisory lock keys: (this, repository id)
HTTPS_USERNAME = "x-access-token"  # GitHub's name for token logins; GitLab and Gitea accept any name


class SyncError(Exception):
    """The repository could not be read at all; the message says why."""


@dataclass
class SyncReport:
    commit: str = ""
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # directory -> error
    error: str = ""  # the sync as a whole failed: nothing changed

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed

    def as_dict(self) -> dict:
        return asdict(self)


def sync_repository(repository: GitRepository) -> SyncReport:
    with _one_sync_at_a_time(repository):
        GitRepository.objects.filter(pk=repository.pk).update(status=GitSyncStatus.SYNCING)
        report = SyncReport()
        try:
            with tempfile.TemporaryDirectory(prefix="executor-git-") as tmp:
                checkout = _fetch(repository, Path(tmp), report)
                _import_directories(repository, checkout, report)
        except SyncError as exc:
            report.error = str(exc)
        _record(repository, report)
    logger.info("sync of %s: %s", repository, report.as_dict())
    return report


def _fetch(repository: GitRepository, tmp: Path, report: SyncReport) -> Path:
    with _credentials(repository, tmp) as auth:
        try:
            remote = porcelain.ls_remote(repository.url, **auth)
            repository.branches = sorted(
                ref.decode()[len("refs/heads/") :] for ref in remote.refs if ref.startswith(b"refs/heads/")
            )
            if repository.branch not in repository.branches:
                found = ", ".join(repository.branches) or "none"
                raise SyncError(f"branch {repository.branch!r} not found; the repository has: {found}")
            checkout = tmp / "checkout"
            cloned = porcelain.clone(repository.url, checkout, branch=repository.branch, depth=1,
                                     errstream=io.BytesIO(), **auth)  # fmt: skip
            report.commit = cloned.head().decode()
            cloned.close()
            return checkout
        except SyncError:
            raise
        except Exception as exc:  # dulwich reports network, protocol and auth problems with many exception types
            logger.warning("fetching %s failed", repository, exc_info=True)
            raise SyncError(f"could not fetch {repository.url}: {type(exc).__name__}: {str(exc).strip()}") from None


def _import_directories(repository: GitRepository, checkout: Path, report: SyncReport) -> None:
    source = GitSource(repository, report.commit)
    present = []
    for directory in sorted(path for path in checkout.iterdir() if path.is_dir() and not path.name.startswith(".")):
        present.append(directory.name)
        try:
            result = import_package_dir(directory, repository.project.name, source)
        except PackageImportError as exc:
            report.failed[directory.name] = str(exc)
            continue
        (report.created if result.created else report.updated).append(directory.name)
    for package in Package.objects.filter(git_repository=repository, active=True).exclude(package_name__in=present):
        package.active = False
        package.save(update_fields=["active", "updated_at"])
        sync_package_schedule(package)
        report.deactivated.append(package.package_name)


def _record(repository: GitRepository, report: SyncReport) -> None:
    if report.error:
        status = GitSyncStatus.FAILED
    else:
        status = GitSyncStatus.PARTIAL if report.failed else GitSyncStatus.OK
    errors = [report.error] if report.error else [f"{name}: {error}" for name, error in report.failed.items()]
    fields = {"status": status, "last_sync_at": timezone.now(), "last_error": "\n".join(errors),
              "last_report": report.as_dict(), "branches": repository.branches}  # fmt: skip
    if report.commit and not report.error:
        fields["current_commit"] = report.commit
    GitRepository.objects.filter(pk=repository.pk).update(**fields)
    for name, value in fields.items():
        setattr(repository, name, value)


@contextlib.contextmanager
def _credentials(repository: GitRepository, tmp: Path):
    """dulwich's keyword arguments for this repository's authentication."""
    if repository.auth == GitAuth.HTTPS_TOKEN:
        if not repository.https_token_encrypted:
            raise SyncError("HTTPS token authentication is chosen but no token is set")
        yield {"username": HTTPS_USERNAME, "password": decrypt(repository.https_token_encrypted)}
    elif repository.auth == GitAuth.DEPLOY_KEY:
        if not repository.deploy_private_key_encrypted:
            raise SyncError("deploy key authentication is chosen but no key was generated")
        key_file = tmp / "deploy_key"
        key_file.touch(mode=0o600)
        key_file.write_text(decrypt(repository.deploy_private_key_encrypted))
        known_hosts = Path.home() / ".executor" / "git_known_hosts"  # the worker's home: writable in the image
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        # A host is trusted the first time it is seen and checked against that afterwards (ssh's accept-new).
        ssh = f"ssh -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts} -o IdentitiesOnly=yes"
        yield {"key_filename": str(key_file), "ssh_command": ssh}
    else:
        yield {}


@contextlib.contextmanager
def _one_sync_at_a_time(repository: GitRepository):
    if connection.vendor != "postgresql":  # the quick start's SQLite serializes every write anyway
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, repository.pk])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, repository.pk])
