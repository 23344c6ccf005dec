"""Git sync: a project's repository branch becomes packages, one per top-level directory (the FX layout).

Each sync fetches the branch afresh (depth 1, dulwich) into a bare repository in a temporary directory and reads
the commit's tree from the Git object store: no checkout is ever written, so a symlink in the repository can
never make the server read one of its own files. A repository saved without a branch follows the remote's default
branch, the one its HEAD names (as `git clone` does), recorded on the first sync. Only regular files (modes
100644 and 100755) directly inside a top-level directory become package files; symlinks, submodules, nested
directories and anything else are listed in the report (`skipped`), and a top-level entry that is not a directory
makes no package.

Every directory goes through the same import as `import_package` (packages/importer.py), each in its own
transaction: a broken directory is reported with its error and the others still sync. A repository creates and
updates only the packages it owns: a directory named like a package uploaded by hand or owned by another
repository is reported in `conflicts` and left untouched, unless the sync was asked to adopt that name. A package
whose directory disappeared is deactivated (its history stays). Two syncs of one repository never interleave: a
PostgreSQL advisory lock makes the second wait for the first.

The URL is checked against the policy of packages/git_urls.py when the sync starts, and the address every HTTPS
connection reaches is checked again (a name may resolve elsewhere the second time). Redirects are refused, not
followed: dulwich's HTTP client lets urllib3 follow them to any host and then rebases every later request onto
the new location (it does keep the token to its original origin), which would let a repository host send the
server to an internal address or to plain http. Credentials are bound to a host: the token is sent only to the
host it was given for (`credentials_host`), and an SSH host key is pinned per repository on the first sync
(`ssh_known_hosts`) and required afterwards.

Packages remember the commit they came from; a worker records that commit on each execution when it takes it
(workers/runner.py), and a run keeps the files it started with even if a sync lands meanwhile.
"""

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from django.db import connection, transaction
from django.utils import timezone
from dulwich.client import (
    GitClient,
    LocalGitClient,
    SSHGitClient,
    SSHVendor,
    SubprocessWrapper,
    Urllib3HttpGitClient,
    default_urllib3_manager,
)
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from executor_project import metrics

from . import git_urls
from .encryption import decrypt
from .git_report import TOP_LEVEL, SyncReport
from .git_urls import GitUrl, UnsafeGitUrl
from .importer import GitSource, PackageConflict, PackageImportError, import_package_files, refusal_for_mode
from .models import GitAuth, GitRepository, GitSyncStatus, Package

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x6578  # advisory lock keys: (this, repository id)
HTTPS_USERNAME = "x-access-token"  # GitHub's name for token logins; GitLab and Gitea accept any name
NETWORK_TIMEOUT_SECONDS = 60
REGULAR_FILE_MODES = (0o100644, 0o100755)
HEAD = b"HEAD"


class SyncError(Exception):
    """The repository could not be read at all; the message says why (and holds no secret)."""


def sync_repository(repository: GitRepository, adopt: Collection[str] = ()) -> SyncReport:
    """Fetch the repository's branch and import its directories (module docstring); record and return the report.

    `adopt`: names of packages uploaded by hand or owned by another repository that this sync may take over.
    """
    with _one_sync_at_a_time(repository):
        GitRepository.objects.filter(pk=repository.pk).update(status=GitSyncStatus.SYNCING)
        report = SyncReport()
        try:
            url = _checked_url(repository)
            with tempfile.TemporaryDirectory(prefix="executor-git-") as tmp:
                store, tree = _fetch(repository, url, Path(tmp), report)
                _import_tree(repository, store, tree, report, set(adopt))
        except SyncError as exc:
            report.error = str(exc)
        except Exception as exc:  # recorded, so the repository does not stay "syncing"; details in the log only
            logger.exception("sync of %s failed", repository)
            report.error = f"internal error ({type(exc).__name__}); the worker's log has the details"
        _record(repository, report)
    logger.info("sync of %s: %s", repository, report.as_dict())
    return report


def _checked_url(repository: GitRepository) -> GitUrl:
    """The repository's URL, if the URL policy and the credentials' host binding allow fetching it now."""
    try:
        url = git_urls.check_url(repository.url)
    except UnsafeGitUrl as exc:
        raise SyncError(f"the URL is not allowed: {exc}") from None
    bound = repository.credentials_host
    if repository.auth == GitAuth.HTTPS_TOKEN:
        if url.kind != git_urls.HTTPS:
            raise SyncError("HTTPS token authentication needs an https:// URL")
        if not repository.https_token_encrypted:
            raise SyncError("HTTPS token authentication is chosen but no token is set")
        if not bound:
            raise SyncError(f"the stored token is not bound to a host: enter the token again for {url.authority}")
        if bound != url.authority:
            raise SyncError(f"the stored token was given for host {bound}, not {url.authority}: enter the token "
                            f"again for {url.authority}")  # fmt: skip
    elif repository.auth == GitAuth.DEPLOY_KEY:
        if url.kind != git_urls.SSH:
            raise SyncError("deploy key authentication needs an ssh:// or git@host:path URL")
        if not repository.deploy_private_key_encrypted:
            raise SyncError("deploy key authentication is chosen but no key was generated")
    if bound and bound != url.authority:
        # Whatever is stored (a pinned host key, a token) belongs to another host. The admin forgets it when
        # the URL's host changes there; a URL changed any other way stops here.
        raise SyncError(f"the stored credentials (pinned SSH host key, HTTPS token) were given for host {bound}, "
                        f"not {url.authority or 'a local path'}: save the repository in the admin to forget "
                        "them")  # fmt: skip
    return url


def _fetch(repository: GitRepository, url: GitUrl, tmp: Path, report: SyncReport) -> tuple[BaseObjectStore, Tree]:
    """Fetch the branch's commit (depth 1) into a bare repository under `tmp`; return its object store and tree.

    A repository without a branch gets the remote's default branch, the one its HEAD names (as `git clone` does),
    recorded on the repository so later syncs and the push webhook follow that branch.
    """
    target = Repo.init_bare(str(tmp / "repository.git"), mkdir=True)
    wanted = f"refs/heads/{repository.branch}".encode() if repository.branch else HEAD
    found: dict[bytes, bytes] = {}

    def determine_wants(refs, depth=None) -> list[bytes]:
        found.update(refs)
        return [refs[wanted]] if wanted in refs else []

    prefixes = [b"refs/heads/"] if repository.branch else [HEAD, b"refs/heads/"]
    try:
        with _transport(repository, url, tmp, report) as client:
            result = client.fetch(url.path, target, determine_wants=determine_wants, depth=1, ref_prefix=prefixes)
    except SyncError:
        raise
    except Exception as exc:  # dulwich reports network, protocol and auth problems with many exception types
        logger.warning("fetching %s failed", repository, exc_info=True)
        # The URL holds no credentials (git_urls refuses them), so it may be shown.
        raise SyncError(f"could not fetch {repository.url}: {type(exc).__name__}: {str(exc).strip()}") from None
    prefix = b"refs/heads/"
    repository.branches = sorted(ref[len(prefix) :].decode(errors="replace") for ref in found if ref.startswith(prefix))
    if not repository.branch:
        _take_default_branch(repository, result.symrefs.get(HEAD), found, report)
    if wanted not in found:
        branches = ", ".join(repository.branches) or "none"
        raise SyncError(f"branch {repository.branch!r} not found; the repository has: {branches}")
    commit = target.object_store[found[wanted]]
    if not isinstance(commit, Commit):
        raise SyncError(f"branch {repository.branch!r} does not point to a commit")
    report.commit = commit.id.decode()
    return target.object_store, target.object_store[commit.tree]


def _take_default_branch(repository: GitRepository, head: bytes | None, refs: dict[bytes, bytes],
                         report: SyncReport) -> None:  # fmt: skip
    """Record the branch the remote's HEAD names as the repository's branch (only if none was set meanwhile)."""
    prefix = b"refs/heads/"
    if head is None and HEAD in refs:  # a server that does not say where HEAD points: the one branch at its commit
        matching = [ref for ref, sha in refs.items() if ref.startswith(prefix) and sha == refs[HEAD]]
        head = matching[0] if len(matching) == 1 else None
    if head is None or not head.startswith(prefix) or head not in refs:
        branches = ", ".join(repository.branches) or "none"
        raise SyncError(f"the repository does not name a default branch (HEAD): choose a branch ({branches})")
    branch = head[len(prefix) :].decode(errors="replace")
    if len(branch) > GitRepository._meta.get_field("branch").max_length:  # the remote chooses it: bounded here
        raise SyncError("the repository's default branch name is too long: choose a branch")
    repository.branch = branch
    GitRepository.objects.filter(pk=repository.pk, branch="").update(branch=repository.branch)
    report.notes.append(f"branch {repository.branch}: the repository's default branch (its HEAD)")


def _import_tree(repository: GitRepository, store: BaseObjectStore, root: Tree, report: SyncReport,
                 adopt: set[str]) -> None:  # fmt: skip
    source = GitSource(repository, report.commit)
    present = []
    for entry in root.iteritems(name_order=True):
        name = entry.path.decode("utf-8", errors="replace")
        if name.startswith(".") or stat.S_ISREG(entry.mode):
            continue  # .github and the like, README.md: not packages, by design
        if not stat.S_ISDIR(entry.mode):
            report.skipped.setdefault(TOP_LEVEL, []).append(f"{name}: {_refusal(entry.mode)}")
            continue
        present.append(name)
        try:
            files, skipped = _package_files(store, store[entry.sha])
        except (KeyError, TypeError) as exc:  # a tree that names objects the fetch did not bring: crafted
            report.failed[name] = f"the Git objects of this directory cannot be read ({type(exc).__name__})"
            continue
        if skipped:
            report.skipped[name] = skipped
        try:
            # The package's project is the repository's (importer: _Claim); adopt only the names asked for.
            result = import_package_files(name, files, source=source, skipped=skipped, adopt=name in adopt)
        except PackageImportError as exc:
            target = report.conflicts if isinstance(exc, PackageConflict) else report.failed
            target[name] = str(exc)
            continue
        report.notes.extend(result.notes)
        if result.adopted:
            report.adopted.append(name)
        (report.created if result.created else report.updated).append(name)
    for package in Package.objects.filter(git_repository=repository, active=True).exclude(package_name__in=present):
        package.active = False
        with transaction.atomic():  # its beat task is disabled in the same transaction (packages/schedules.py)
            package.save(update_fields=["active", "updated_at"])
        report.deactivated.append(package.package_name)


def _package_files(store: BaseObjectStore, tree) -> tuple[dict[str, bytes], list[str]]:
    """The regular files directly in a package directory's tree, by name, and a line for every other entry."""
    if not isinstance(tree, Tree):
        raise TypeError("not a tree")
    files, skipped = {}, []
    for entry in tree.iteritems(name_order=True):
        try:
            name = entry.path.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(f"{entry.path!r}: file names must be UTF-8")
            continue
        if entry.mode not in REGULAR_FILE_MODES:
            skipped.append(f"{name}: {_refusal(entry.mode)}")
            continue
        blob = store[entry.sha]
        if not isinstance(blob, Blob):
            skipped.append(f"{name}: not a file in the Git object store")
            continue
        files[name] = blob.as_raw_string()
    return files, skipped


def _refusal(mode: int) -> str:
    if stat.S_IFMT(mode) == 0o160000:  # a gitlink: a commit of another repository
        return "submodules are not imported"
    if stat.S_ISREG(mode):
        return f"file mode {mode:o} is not imported (only 100644 and 100755)"
    return refusal_for_mode(mode) or f"entries of mode {mode:o} are not imported"


def _record(repository: GitRepository, report: SyncReport) -> None:
    if report.error:
        status = GitSyncStatus.FAILED
    else:
        status = GitSyncStatus.PARTIAL if report.failed or report.conflicts else GitSyncStatus.OK
    problems = {**report.failed, **report.conflicts}
    errors = [report.error] if report.error else [f"{name}: {error}" for name, error in problems.items()]
    fields = {"status": status, "last_sync_at": timezone.now(), "last_error": "\n".join(errors),
              "last_report": report.as_dict(), "branches": repository.branches}  # fmt: skip
    if report.commit and not report.error:
        fields["current_commit"] = report.commit
    GitRepository.objects.filter(pk=repository.pk).update(**fields)
    metrics.inc(metrics.GIT_SYNCS, status=status)
    for name, value in fields.items():
        setattr(repository, name, value)


@contextlib.contextmanager
def _transport(repository: GitRepository, url: GitUrl, tmp: Path, report: SyncReport) -> Iterator[GitClient]:
    """A dulwich client for `url`, built from its parsed parts (never from the raw string: git_urls decides)."""
    if url.kind == git_urls.LOCAL:
        yield LocalGitClient()
    elif url.kind == git_urls.HTTPS:
        yield _https_client(repository, url)
    else:
        with _ssh_client(repository, url, tmp, report) as client:
            yield client


# --- HTTPS -------------------------------------------------------------------------------------------------------


def _https_client(repository: GitRepository, url: GitUrl) -> Urllib3HttpGitClient:
    base_url = f"https://{url.authority}{url.path}"
    manager = default_urllib3_manager(None, pool_manager_cls=_CheckedPoolManager,
                                      proxy_manager_cls=_NoRedirectProxyManager, base_url=base_url,
                                      timeout=NETWORK_TIMEOUT_SECONDS)  # fmt: skip
    username = password = None
    if repository.auth == GitAuth.HTTPS_TOKEN:  # _checked_url made sure the token belongs to this host
        username, password = HTTPS_USERNAME, decrypt(repository.https_token_encrypted)
    # dulwich attaches the token only to requests for the origin of base_url; redirects are refused below.
    return Urllib3HttpGitClient(base_url, pool_manager=manager, username=username, password=password)


class _NoRedirects:
    """Pool manager mixin: a redirect answer is an error, never followed (module docstring)."""

    def urlopen(self, method, url, redirect=True, **kwargs):
        response = super().urlopen(method, url, redirect=False, **kwargs)
        location = response.get_redirect_location()
        if location:
            response.drain_conn()
            parts = urlsplit(urljoin(url, location))
            raise SyncError(f"{urlsplit(url).netloc} answered with a redirect to {parts.scheme}://{parts.netloc}"
                            f"{parts.path}: Git sync does not follow redirects; enter the repository's final "
                            "https:// URL")  # fmt: skip
        return response


class _CheckedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """Checks the address the socket actually reached against the URL policy, before TLS or any byte is sent."""

    def _new_conn(self):
        sock = super()._new_conn()
        try:
            git_urls.check_address(self.host, sock.getpeername()[0])
        except UnsafeGitUrl as exc:
            sock.close()
            raise SyncError(str(exc)) from None  # not an OSError: urllib3 must not retry or wrap it
        return sock


class _CheckedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedPoolManager(_NoRedirects, urllib3.PoolManager):
    """Direct connections: https only (redirects are refused, so nothing else is ever asked for)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool_classes_by_scheme = {"https": _CheckedHTTPSConnectionPool}


class _NoRedirectProxyManager(_NoRedirects, urllib3.ProxyManager):
    """Through an https_proxy from the environment: the proxy resolves and connects, the URL was checked first."""


# --- SSH ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ssh_client(repository: GitRepository, url: GitUrl, tmp: Path, report: SyncReport) -> Iterator[SSHGitClient]:
    """An SSH client bound to this repository's pinned host key; on the first sync, the key the host shows is
    accepted and pinned (saved in the database) whether or not the fetch then succeeds."""
    known_hosts = tmp / "known_hosts"
    _write_private(known_hosts, repository.ssh_known_hosts)
    key_file = None
    if repository.auth == GitAuth.DEPLOY_KEY:
        key_file = tmp / "deploy_key"
        _write_private(key_file, decrypt(repository.deploy_private_key_encrypted))
    # ssh connects to this address, checked here, not to whatever the name resolves to when ssh looks it up again.
    try:
        address = git_urls.resolve_host(url.host, url.effective_port)[0]
        git_urls.check_address(url.host, address)
    except UnsafeGitUrl as exc:
        raise SyncError(f"the URL is not allowed: {exc}") from None
    vendor = _SshVendor(known_hosts, pinned=bool(repository.ssh_known_hosts), address=address, alias=url.host)
    client = SSHGitClient(url.host, port=url.port, username=url.username, vendor=vendor,
                          key_filename=str(key_file) if key_file else None)  # fmt: skip
    try:
        yield client
    except Exception as exc:
        if repository.ssh_known_hosts and "Host key verification failed" in str(exc):
            raise SyncError(f"the SSH host key {url.authority} showed is not the one pinned at the first sync "
                            "(a changed key, or someone in between): nothing was fetched. If the host's key really "
                            "changed, use the action Forget pinned SSH host keys and sync again") from None  # fmt: skip
        raise
    finally:
        if not repository.ssh_known_hosts:
            _pin_host_key(repository, url, known_hosts, report)


def _pin_host_key(repository: GitRepository, url: GitUrl, known_hosts: Path, report: SyncReport) -> None:
    learned = "".join(line + "\n" for line in known_hosts.read_text().splitlines() if line.strip())
    if not learned:
        return
    GitRepository.objects.filter(pk=repository.pk).update(ssh_known_hosts=learned, credentials_host=url.authority)
    repository.ssh_known_hosts, repository.credentials_host = learned, url.authority
    report.notes.append(f"pinned the SSH host key of {url.authority} (first sync): later syncs require it")


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(content)


class _SshVendor(SSHVendor):
    """Runs OpenSSH with no configuration file, a fixed environment, this repository's known_hosts only, and
    host key checking: `accept-new` on the first sync (nothing pinned yet), `yes` afterwards."""

    def __init__(self, known_hosts: Path, *, pinned: bool, address: str, alias: str):
        self.known_hosts, self.pinned, self.address, self.alias = known_hosts, pinned, address, alias

    def run_command(self, host, command, username=None, port=None, password=None, key_filename=None,
                    ssh_command=None, protocol_version=None) -> SubprocessWrapper:  # fmt: skip
        ssh = shutil.which("ssh", path="/usr/bin:/bin:/usr/local/bin")
        if ssh is None:
            raise SyncError("no ssh client is installed on this worker (Debian: openssh-client)")
        options = {
            "BatchMode": "yes",  # never a prompt: a question is an error
            "StrictHostKeyChecking": "yes" if self.pinned else "accept-new",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "HostName": self.address,  # the address git_urls checked
            "HostKeyAlias": self.alias,  # known_hosts lines name the URL's host, not the address
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "HashKnownHosts": "no",
            "IdentitiesOnly": "yes",
            "PubkeyAuthentication": "yes" if key_filename else "no",
            "ConnectTimeout": str(NETWORK_TIMEOUT_SECONDS),
        }
        argv = [ssh, "-F", "/dev/null", "-x", "-T"]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        if protocol_version:
            argv += ["-o", f"SetEnv GIT_PROTOCOL=version={protocol_version}"]
        if port:
            argv += ["-p", str(port)]
        if key_filename:
            argv += ["-i", key_filename]
        destination = f"{username}@{host}" if username else host
        if destination.startswith("-"):  # git_urls refuses such hosts and users already; never an option
            raise SyncError("the SSH host or user name cannot start with '-'")
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.known_hosts.parent)}
        proc = subprocess.Popen([*argv, "--", destination, command], bufsize=0, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
        return SubprocessWrapper(proc)


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
