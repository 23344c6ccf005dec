"""Test data builders: readable defaults, override what the test is about."""

from pathlib import Path

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
