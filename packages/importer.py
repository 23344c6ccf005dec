"""Import a package (FX layout) into the catalogue, creating the package or updating it in place.

One directory = one package; its name is the technical package name. Every file is kept, except `secrets.json`,
whose values go to encrypted storage and which is never kept as a file. Order: the files named by manifest.json's
`execution_order` first, in that order, then the rest by name. Which files run, as on FX: with an `entrypoint`,
that file alone; else with an `execution_order`, the files it lists; else (no manifest, or one with neither key)
every file, as uploads do. The others are support files (Script.runs unset): shipped in the package directory
beside the steps (modules they import, data they read; manifest.json itself) but never a step. Re-importing
updates the package and its scripts in place: scripts keep their ids, files that disappeared are removed,
execution history stays. Everything is validated before anything is written, and the write is one transaction: a
bad package changes nothing.

The core, `import_package_files`, takes the files as a name -> bytes mapping and never touches the file system.
`import_package` reads a directory into one with `read_package_dir` (regular files only: symlinks, nested
directories and special files are listed as skipped, never followed); Git sync reads blobs from the Git object
store (packages/git_sync.py). Ownership is explicit: an import changes only a package it may own
(`import_package_files`), so neither a repository nor a person takes over someone else's package by its name.

manifest.json keys: description, entrypoint, execution_order, tags, trigger_events, schedule, priority,
allow_manual_triggering, active, output_events (as on FX). Unknown keys are refused, so a typo is not
silently ignored.
"""

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from executor_lib.safe_files import UnsafeFile, read_regular
from executor_project import bounded_json

from . import cron
from .models import (
    EventType,
    Package,
    Project,
    Script,
    Tag,
    file_name_validator,
    package_name_validator,
    store_package_secrets,
)
from .run_forms import ParametersError, parse_parameters

SECRETS_FILE = "secrets.json"
JSON_FILES = ("manifest.json", "config.json", "parameters.json", SECRETS_FILE)
_MANIFEST_TYPES = {
    "description": str,
    "entrypoint": str,
    "execution_order": list,
    "tags": list,
    "trigger_events": list,
    "schedule": str,
    "priority": int,
    "allow_manual_triggering": bool,
    "active": bool,
    "output_events": list,
}


class PackageImportError(Exception):
    """The files cannot become a package; the message says what to fix. Nothing was changed."""


class PackageConflict(PackageImportError):
    """A package of that name exists and this import may not change it (it belongs to a Git repository, to
    another repository, or to another project). Nothing was changed; the message says how to proceed."""


@dataclass
class ImportResult:
    package: Package
    created: bool
    files: list[str]
    secrets: list[str] = field(default_factory=list)
    shipped: list[str] = field(default_factory=list)  # support files: in the package directory, never a step
    skipped: list[str] = field(default_factory=list)  # "name: reason" for each entry that was not imported
    notes: list[str] = field(default_factory=list)  # ownership changes: adopted, detached, moved, given a project
    adopted: bool = False  # a Git import took over a package uploaded by hand or owned by another repository


@dataclass(frozen=True)
class GitSource:
    """Where a package's files came from (packages/git_sync.py): the repository is then its source of truth."""

    repository: object  # GitRepository
    commit: str


def import_package_dir(directory: Path, project_name: str | None = None, *, detach: bool = False) -> ImportResult:
    """Import the regular files directly inside `directory` (`manage.py import_package`).

    Symbolic links, nested directories and special files are not read; each is listed in `skipped`. A package
    that comes from a Git repository is refused unless `detach` (it then leaves the repository), and an existing
    package of another project is refused (module docstring of import_package_files).
    """
    package_name, files, skipped = read_package_dir(directory)
    return import_package_files(package_name, files, project_name=project_name, skipped=skipped, detach=detach)


def read_package_dir(directory: Path) -> tuple[str, dict[str, bytes], list[str]]:
    """The package name, the regular files directly inside `directory` by name, and a line per entry not read.

    Each entry is lstat-ed and only regular files are opened, with O_NOFOLLOW under the directory's descriptor,
    then checked again on the open descriptor, so a symlink swapped in meanwhile is not followed either. The size
    limit (EXECUTOR_MAX_SCRIPT_BYTES) is checked before reading. The directory itself is the one the operator
    named, so a symlink to it is fine.
    """
    directory = Path(directory)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise PackageImportError(f"{directory} is not a directory") from None
    try:
        files, skipped = {}, []
        for name in sorted(os.listdir(dir_fd)):
            reason = refusal_for_mode(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            if reason:
                skipped.append(f"{name}: {reason}")
            else:
                files[name] = _read_regular_file(dir_fd, name)
    finally:
        os.close(dir_fd)
    return directory.resolve().name, files, skipped


def refusal_for_mode(mode: int) -> str | None:
    """Why an entry of this file mode (a stat mode, or a Git tree entry mode) is not imported; None for a regular
    file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symbolic links are not imported"
    if stat.S_ISDIR(mode):
        return "directories inside a package are not imported"
    return "special files (devices, pipes, sockets) are not imported"


def _read_regular_file(dir_fd: int, name: str) -> bytes:
    """A regular file's bytes, opened with O_NOFOLLOW (a symlink swapped in after the lstat is not followed) and
    size-checked before reading (executor_lib/safe_files.py, which the worker uses on step directories too)."""
    try:
        content = read_regular(dir_fd, name, settings.EXECUTOR_MAX_SCRIPT_BYTES)
    except UnsafeFile as exc:
        raise PackageImportError(str(exc)) from None
    if content is None:
        raise PackageImportError(f"{name} disappeared while the directory was read")
    return content


def import_package_files(
    package_name: str,
    files: Mapping[str, bytes],
    *,
    project_name: str | None = None,
    source: GitSource | None = None,
    skipped: Iterable[str] = (),
    adopt: bool = False,
    detach: bool = False,
) -> ImportResult:
    """Create or update package `package_name` from `files` (file name -> content), all in one transaction.

    Ownership (what an import may change):
    - From Git (`source`): a new package, or one this repository owns (Package.git_repository), which follows
      the repository's project. A package uploaded by hand or owned by another repository raises
      PackageConflict and is left as it was, unless `adopt`: it then belongs to the repository and moves into
      its project, and `notes` say so.
    - Not from Git: a package owned by a repository raises PackageConflict unless `detach`, which takes it out of
      the repository. With `project_name`, a package of another project is refused (packages do not move between
      projects on import); a package without a project is given that one.
    `skipped` lines (entries the caller did not read) are passed through to the result.
    """
    _validate(package_name_validator, package_name, "directory name")
    limit = settings.EXECUTOR_MAX_SCRIPT_BYTES
    for name, content in files.items():
        if len(content) > limit:
            raise PackageImportError(f"{name} is {len(content)} bytes; the limit is {limit} bytes")
    parsed = {name: _parse_json(name, files[name]) for name in JSON_FILES if name in files}
    for name in ("config.json", "parameters.json"):
        if name in parsed and not isinstance(parsed[name], dict):
            raise PackageImportError(f"{name} must hold a JSON object")
    if "parameters.json" in parsed:
        _check_run_form(files["parameters.json"])
    manifest = _check_manifest(parsed.get("manifest.json", {}))
    secrets = _check_secrets(parsed.get(SECRETS_FILE, {}))
    names = sorted(name for name in files if name != SECRETS_FILE)
    order = _order(names, manifest.get("execution_order"))
    if manifest.get("entrypoint") and manifest["entrypoint"] not in names:
        raise PackageImportError(f"manifest.json: entrypoint {manifest['entrypoint']} does not exist")
    running = _files_that_run(order, manifest)
    with transaction.atomic():
        # The row stays locked to the end: two imports of one name (two repositories) cannot both claim it.
        package, created = Package.objects.select_for_update().get_or_create(
            package_name=package_name, defaults={"name": package_name}
        )
        claim = _Claim(project_name=project_name, source=source, adopt=adopt, detach=detach)
        notes = claim.apply(package, created)
        _save_package(package, manifest)
        _save_scripts(package, order, running, files)
        store_package_secrets(package, secrets)  # the schedule followed each save (packages/schedules.py)
    return ImportResult(package=package, created=created, files=order, secrets=sorted(secrets),
                        shipped=[name for name in order if name not in running], skipped=list(skipped), notes=notes,
                        adopted=claim.adopted)  # fmt: skip


@dataclass
class _Claim:
    """Who is importing (Git or a person), and what they allowed: the ownership rules of import_package_files."""

    project_name: str | None
    source: GitSource | None
    adopt: bool
    detach: bool
    adopted: bool = False

    def apply(self, package: Package, created: bool) -> list[str]:
        """Check that this import may change `package` and set its owner and project; return the notes."""
        if self.source:
            return self._from_git(package, created)
        return self._by_hand(package, created)

    def _from_git(self, package: Package, created: bool) -> list[str]:
        repository, notes = self.source.repository, []
        if not created and package.git_repository_id != repository.pk:
            if not self.adopt:
                raise PackageConflict(
                    f"a package of that name exists and does not belong to this repository ({_owner(package)}); "
                    "adopt it explicitly to let this repository manage it"
                )
            notes.append(f"{package.package_name}: adopted ({_owner(package)})")
            self.adopted = True
        if not created and package.project_id != repository.project_id:
            notes.append(f"{package.package_name}: moved from {_project(package)} to project {repository.project}")
        package.project = repository.project
        package.git_repository, package.source_commit = repository, self.source.commit
        package.active = True  # back in the branch: active unless its manifest says otherwise
        return notes

    def _by_hand(self, package: Package, created: bool) -> list[str]:
        notes = []
        if package.git_repository_id:
            if not self.detach:
                raise PackageConflict(
                    f"{package.package_name} comes from Git repository {package.git_repository}; change it there, "
                    "or pass --detach to take it out of the repository"
                )
            notes.append(f"{package.package_name}: detached from Git repository {package.git_repository}")
            package.git_repository, package.source_commit = None, ""
        if not self.project_name:
            return notes
        if package.project_id is None:
            package.project = Project.objects.get_or_create(name=self.project_name)[0]
            if not created:
                notes.append(f"{package.package_name}: given project {package.project}")
        elif package.project.name != self.project_name:
            raise PackageConflict(
                f"{package.package_name} belongs to project {package.project}, not {self.project_name}: an import "
                f"does not move a package between projects (import it with --project {package.project})"
            )
        return notes


def _owner(package: Package) -> str:
    origin = "from another Git repository" if package.git_repository_id else "uploaded by hand"
    return f"{origin}, {_project(package)}"


def _project(package: Package) -> str:
    return f"project {package.project}" if package.project_id else "no project"


def _save_package(package: Package, manifest: dict) -> None:
    for key in ("description", "schedule", "priority", "allow_manual_triggering", "active", "output_events"):
        if key in manifest:
            setattr(package, key, manifest[key])
    package.entrypoint = manifest.get("entrypoint", "")
    try:
        package.full_clean()
    except ValidationError as exc:
        raise PackageImportError(f"manifest.json: {_messages(exc)}") from None
    package.save()
    if "tags" in manifest:
        package.tags.set([Tag.objects.get_or_create(name=name)[0] for name in manifest["tags"]])
    if "trigger_events" in manifest:
        events = [EventType.objects.get_or_create(name=name)[0] for name in manifest["trigger_events"]]
        package.trigger_event_types.set(events)


def _save_scripts(package: Package, order: list[str], running: set[str], contents: Mapping[str, bytes]) -> None:
    package.scripts.exclude(file_name__in=order).delete()
    for position, name in enumerate(order, start=1):
        Script.objects.update_or_create(
            package=package,
            file_name=name,
            defaults={"position": position, "content": contents[name], "runs": name in running},
        )


def _files_that_run(order: list[str], manifest: dict) -> set[str]:
    """The files that become steps (module docstring); the rest are shipped only."""
    if manifest.get("entrypoint"):
        return {manifest["entrypoint"]}
    if "execution_order" in manifest:
        return set(manifest["execution_order"])
    return set(order)


def _check_manifest(manifest) -> dict:
    if not isinstance(manifest, dict):
        raise PackageImportError("manifest.json must hold a JSON object")
    for key, value in manifest.items():
        expected = _MANIFEST_TYPES.get(key)
        if expected is None:
            raise PackageImportError(f"manifest.json: unknown key {key!r} (known: {', '.join(_MANIFEST_TYPES)})")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise PackageImportError(f"manifest.json: {key} must be a {expected.__name__}")
        if expected is list and not all(isinstance(item, str) for item in value):
            raise PackageImportError(f"manifest.json: {key} must be a list of strings")
    if manifest.get("schedule"):
        try:
            cron.parse(manifest["schedule"])
        except cron.CronError as exc:
            raise PackageImportError(f"manifest.json: schedule: {exc}") from None
    return manifest


def _check_run_form(content: bytes) -> None:
    """A parameters.json that cannot become a run form is refused now, not when someone presses Run."""
    try:
        parse_parameters(content)
    except ParametersError as exc:
        raise PackageImportError(str(exc)) from None


def _check_secrets(secrets) -> dict[str, str]:
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        raise PackageImportError("secrets.json must hold a JSON object of names to string values")
    return secrets


def _order(names: list[str], execution_order) -> list[str]:
    for name in names:
        _validate(file_name_validator, name, "file name")
    if execution_order is None:
        return sorted(names)
    missing = [name for name in execution_order if name not in names]
    if missing:
        raise PackageImportError(f"manifest.json: execution_order names files that do not exist: {', '.join(missing)}")
    if len(set(execution_order)) != len(execution_order):
        raise PackageImportError("manifest.json: execution_order lists a file twice")
    return execution_order + sorted(name for name in names if name not in execution_order)


def _parse_json(name: str, content: bytes):
    try:
        return bounded_json.loads(content)
    except bounded_json.JSONRejected as exc:
        # Never echo a secrets file's content: the message names the position only.
        raise PackageImportError(f"{name} is not valid JSON: {exc}") from None


def _validate(validator, value: str, what: str) -> None:
    try:
        validator(value)
    except ValidationError as exc:
        raise PackageImportError(f"{what} {value!r}: {_messages(exc)}") from None


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in exc.message_dict.items())
    return " ".join(exc.messages)
