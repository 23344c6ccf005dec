"""Import a package directory (FX layout) into the catalogue, creating the package or updating it in place.

One directory = one package; its name is the technical package name. Every regular file becomes a script,
except `secrets.json`, whose values go to encrypted storage and which is never kept as a file. Order: the files
named by manifest.json's `execution_order` first, in that order, then the rest by name. With an `entrypoint`,
only that file runs. Re-importing updates the package and its scripts in place: scripts keep their ids, files
that disappeared are removed, execution history stays. Everything is validated before anything is written, and
the write is one transaction: a bad directory changes nothing.

manifest.json keys: description, entrypoint, execution_order, tags, trigger_events, schedule, priority,
allow_manual_triggering, active, output_events (FX_REFERENCE.md). Unknown keys are refused, so a typo is not
silently ignored.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

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
from .schedules import sync_package_schedule

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
    """The directory cannot become a package; the message says what to fix. Nothing was changed."""


@dataclass
class ImportResult:
    package: Package
    created: bool
    files: list[str]
    secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GitSource:
    """Where a package directory came from (packages/git_sync.py): the repository is then its source of truth."""

    repository: object  # GitRepository
    commit: str


def import_package_dir(
    directory: Path, project_name: str | None = None, source: GitSource | None = None
) -> ImportResult:
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageImportError(f"{directory} is not a directory")
    package_name = directory.resolve().name
    _validate(package_name_validator, package_name, "directory name")
    files = {path.name: path for path in sorted(directory.iterdir()) if path.is_file()}
    parsed = {name: _read_json(files[name]) for name in JSON_FILES if name in files}
    for name in ("config.json", "parameters.json"):
        if name in parsed and not isinstance(parsed[name], dict):
            raise PackageImportError(f"{name} must hold a JSON object")
    if "parameters.json" in parsed:
        _check_run_form(files["parameters.json"])
    manifest = _check_manifest(parsed.get("manifest.json", {}))
    secrets = _check_secrets(parsed.get(SECRETS_FILE, {}))
    names = [name for name in files if name != SECRETS_FILE]
    order = _order(names, manifest.get("execution_order"))
    if manifest.get("entrypoint") and manifest["entrypoint"] not in names:
        raise PackageImportError(f"manifest.json: entrypoint {manifest['entrypoint']} does not exist")
    contents = {name: _read(files[name]) for name in order}
    with transaction.atomic():
        package, created = _save_package(package_name, manifest, project_name, source)
        _save_scripts(package, order, contents)
        store_package_secrets(package, secrets)
        sync_package_schedule(package)
    return ImportResult(package=package, created=created, files=order, secrets=sorted(secrets))


def _save_package(package_name: str, manifest: dict, project_name: str | None, source: GitSource | None):
    package, created = Package.objects.get_or_create(package_name=package_name, defaults={"name": package_name})
    if project_name:
        package.project = Project.objects.get_or_create(name=project_name)[0]
    if source:
        if package.git_repository_id not in (None, source.repository.pk):
            raise PackageImportError(f"package {package_name} comes from another repository ({package.git_repository})")
        package.git_repository, package.source_commit = source.repository, source.commit
        package.active = True  # back in the branch: active unless its manifest says otherwise
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
    return package, created


def _save_scripts(package: Package, order: list[str], contents: dict[str, bytes]) -> None:
    package.scripts.exclude(file_name__in=order).delete()
    for position, name in enumerate(order, start=1):
        Script.objects.update_or_create(
            package=package, file_name=name, defaults={"position": position, "content": contents[name]}
        )


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


def _check_run_form(path: Path) -> None:
    """A parameters.json that cannot become a run form is refused now, not when someone presses Run."""
    try:
        parse_parameters(_read(path))
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


def _read_json(path: Path):
    try:
        return json.loads(_read(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        # Never echo a secrets file's content: the message names the position only.
        raise PackageImportError(f"{path.name} is not valid JSON: {exc}") from None


def _read(path: Path) -> bytes:
    limit = settings.EXECUTOR_MAX_SCRIPT_BYTES
    if path.stat().st_size > limit:
        raise PackageImportError(f"{path.name} is {path.stat().st_size} bytes; the limit is {limit} bytes")
    return path.read_bytes()


def _validate(validator, value: str, what: str) -> None:
    try:
        validator(value)
    except ValidationError as exc:
        raise PackageImportError(f"{what} {value!r}: {_messages(exc)}") from None


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in exc.message_dict.items())
    return " ".join(exc.messages)
