"""manage.py create_api_key NAME [--project PROJECT] [--scope SCOPE ...]: issue an API key and print it (the only
time it is shown). Without --project it is a platform key, which reaches every project; without --scope it gets
every scope. The key alone goes to stdout, so `KEY=$(manage.py create_api_key ci)` works."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from executions.models import ALL_API_SCOPES, ApiKey
from packages.audit import AuditAction, record
from packages.models import Project

ACTOR = "manage.py create_api_key"


class Command(BaseCommand):
    help = "Issue an API key for the HTTP API and print it once; only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="who or what uses the key")
        parser.add_argument(
            "--project",
            help="the project (its name, or its number) whose packages, executions and repositories alone the key "
            "reaches; without it, a platform key that reaches every project",
        )
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            metavar="SCOPE",
            help=f"what the key may do, repeatable: {', '.join(ALL_API_SCOPES)} (default: all of them)",
        )

    def handle(self, *args, name: str, project: str | None, scopes: list[str] | None, **options):
        owner = _project(project) if project is not None else None
        scopes = _scopes(scopes) if scopes is not None else list(ALL_API_SCOPES)
        with transaction.atomic():  # the key and its audit entry are kept together or not at all
            api_key, key = ApiKey.issue(name, project=owner, scopes=scopes)
            record(AuditAction.ISSUE_KEY, api_key, actor=ACTOR, details={"scopes": scopes})
        reach = f"project {owner.name!r}" if owner else "the platform (every project)"
        self.stderr.write(f"API key {api_key.hint}… for {name!r} issued for {reach} with scopes "
                          f"{', '.join(scopes)}; it is not shown again.")  # fmt: skip
        self.stdout.write(key)


def _project(given: str) -> Project:
    """A project by name, else by number (a project called "7" is found by its name first)."""
    project = Project.objects.filter(name=given).first()
    if project is None and given.isdigit():
        project = Project.objects.filter(pk=int(given)).first()
    if project is None:
        known = ", ".join(Project.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise CommandError(f"No project {given!r} (projects: {known}). Leave out --project for a platform key.")
    return project


def _scopes(given: list[str]) -> list[str]:
    unknown = [scope for scope in given if scope not in ALL_API_SCOPES]
    if unknown:
        raise CommandError(f"Unknown scope {', '.join(map(repr, unknown))}: choose from {', '.join(ALL_API_SCOPES)}.")
    return list(dict.fromkeys(given))  # in the order given, once each
