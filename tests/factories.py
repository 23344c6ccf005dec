"""Test data builders: readable defaults, override what the test is about."""

from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile

from packages.models import Package, Script, Secret

FIXTURES = Path(__file__).parent / "fixtures"
SEED_DIR = FIXTURES / "seed_package"


def make_package(package_name: str = "alice_reports", files: dict[str, str | bytes] | None = None, **fields) -> Package:
    """A package whose scripts are `files`, in the given order."""
    fields.setdefault("name", package_name.replace("_", " ").title())
    package = Package.objects.create(package_name=package_name, **fields)
    for position, (file_name, content) in enumerate((files or {}).items(), start=1):
        data = content.encode() if isinstance(content, str) else content
        Script.objects.create(package=package, position=position, file_name=file_name, content=data)
    return package


def seed_files() -> dict[str, bytes]:
    """The seed walkthrough's two files: config.json, then test_scr.py (reads it through ferris_cli)."""
    return {name: (SEED_DIR / name).read_bytes() for name in ("config.json", "test_scr.py")}


def add_secret(package=None, project=None, *, name: str, value: str, scope: str = "package") -> None:
    secret = Secret(scope=scope, package=package, project=project, name=name)
    secret.set_value(value)
    secret.save()


def make_staff(username: str, password: str = "password", **fields):
    """A staff user with no model permissions at all: what they may do comes from their project memberships."""
    from django.contrib.auth import get_user_model

    fields.setdefault("is_staff", True)
    return get_user_model().objects.create_user(username, password=password, **fields)


def make_member(user, project, role: str):
    """Give `user` the `role` (viewer, runner, maintainer, owner) in `project`."""
    from packages.models import ProjectMembership

    membership, _ = ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def empty_inline(prefix: str) -> dict:
    return {f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MIN_NUM_FORMS": "0",
            f"{prefix}-MAX_NUM_FORMS": "1000"}  # fmt: skip


def package_form(**overrides) -> dict:
    """The admin's Add package form for the seed package (its two files uploaded), as posted."""
    data = {
        "name": "Seed package",
        "package_name": "seed_package",
        "description": "Prints its configuration",
        "active": "on",
        "allow_manual_triggering": "on",
        "timezone": "UTC",
        "priority": "5",
        "retries_after_worker_loss": "0",
        "warm_steps": "on",
        "scripts-TOTAL_FORMS": "2",
        "scripts-INITIAL_FORMS": "0",
        "scripts-MIN_NUM_FORMS": "0",
        "scripts-MAX_NUM_FORMS": "1000",
        **empty_inline("environment_variables"),
        **empty_inline("secrets"),
    }
    for index, name in enumerate(["config.json", "test_scr.py"]):
        data[f"scripts-{index}-upload"] = SimpleUploadedFile(name, (SEED_DIR / name).read_bytes())
    data.update(overrides)
    return data
