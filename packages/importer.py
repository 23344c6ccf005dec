"""Import a package directory (FX layout) into the catalogue.

One directory = one package; its name is the technical package name. Every regular file becomes a script.
Order: the files named by manifest.json's `execution_order` first, in that order, then the rest by name.
Re-importing a directory replaces the package's scripts in one transaction.

`secrets.json` is never stored as a file (secrets get encrypted storage in a later issue; until then the file is
skipped and reported). Other manifest keys (schedule, triggers, tags, ...) arrive with the catalogue issue.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from .models import Package, Project, Script, file_name_validator, package_name_validator

SKIPPED_FILES = {"secrets.json"}


class PackageImportError(Exception):
    """The directory cannot become a package; the message says what to fix. Nothing was changed."""


@dataclass
class ImportResult:
    package: Package
    created: bool
    files: list[str]
    skipped: list[str] = field(default_factory=list)


def import_package_dir(directory: Path, project_name: str | None = None) -> ImportResult:
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageImportError(f"{directory} is not a directory")
    package_name = directory.resolve().name
    _validate(package_name_validator, package_name, "directory name")
    manifest = _read_manifest(directory)
    files = {path.name: path for path in sorted(directory.iterdir()) if path.is_file()}
    skipped = sorted(name for name in files if name in SKIPPED_FILES)
    order = _order([name for name in files if name not in SKIPPED_FILES], manifest.get("execution_order"))
    contents = {name: _read(files[name]) for name in order}
    with transaction.atomic():
        project = Project.objects.get_or_create(name=project_name)[0] if project_name else None
        package, created = Package.objects.get_or_create(
            package_name=package_name, defaults={"name": package_name, "project": project}
        )
        package.description = str(manifest.get("description", package.description))
        if project is not None:
            package.project = project
        package.save()
        package.scripts.all().delete()
        Script.objects.bulk_create(
            Script(package=package, position=index, file_name=name, content=contents[name])
            for index, name in enumerate(order, start=1)
        )
    return ImportResult(package=package, created=created, files=order, skipped=skipped)


def _read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageImportError(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackageImportError("manifest.json must hold a JSON object")
    return manifest


def _order(names: list[str], execution_order) -> list[str]:
    for name in names:
        _validate(file_name_validator, name, "file name")
    if execution_order is None:
        return sorted(names)
    if not isinstance(execution_order, list) or not all(isinstance(item, str) for item in execution_order):
        raise PackageImportError("manifest.json: execution_order must be a list of file names")
    missing = [name for name in execution_order if name not in names]
    if missing:
        raise PackageImportError(f"manifest.json: execution_order names files that do not exist: {', '.join(missing)}")
    if len(set(execution_order)) != len(execution_order):
        raise PackageImportError("manifest.json: execution_order lists a file twice")
    return execution_order + sorted(name for name in names if name not in execution_order)


def _read(path: Path) -> bytes:
    limit = settings.EXECUTOR_MAX_SCRIPT_BYTES
    if path.stat().st_size > limit:
        raise PackageImportError(f"{path.name} is {path.stat().st_size} bytes; the limit is {limit} bytes")
    return path.read_bytes()


def _validate(validator, value: str, what: str) -> None:
    try:
        validator(value)
    except ValidationError as exc:
        raise PackageImportError(f"{what} {value!r}: {' '.join(exc.messages)}") from None
