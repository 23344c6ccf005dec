from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from packages.git_report import skipped_lines
from packages.git_sync import sync_repository
from packages.models import GitRepository, Project


class Command(BaseCommand):
    help = ("Add a Git repository to a project if it is new, sync it, and print what was created, updated, "
            "deactivated, left alone or failed. Exits non-zero if anything failed or was left alone.")  # fmt: skip

    def add_arguments(self, parser):
        parser.add_argument("url", help="git@host:org/repo.git, ssh://..., https://... (file:///path or a path only "
                            "with EXECUTOR_GIT_ALLOW_LOCAL)")  # fmt: skip
        parser.add_argument("--project", required=True, help="the project's name (created if new)")
        parser.add_argument("--branch", help="the branch to sync (default: the repository's; if new, the remote's "
                            "default branch, the one its HEAD names)")  # fmt: skip
        parser.add_argument("--adopt", action="append", default=[], metavar="NAME",
                            help="let the repository take over the existing package NAME (uploaded by hand or "
                            "owned by another repository; moved into this project). Repeatable.")  # fmt: skip

    def handle(self, url, project, branch, adopt, **options):
        self._check_url(url, project)
        project_obj, _ = Project.objects.get_or_create(name=project)
        repository, created = GitRepository.objects.select_related("project").get_or_create(
            project=project_obj, url=url, defaults={"branch": branch or ""}
        )
        if branch and repository.branch != branch:
            repository.branch = branch
            repository.save(update_fields=["branch"])
        self.stdout.write(f"{'Added' if created else 'Syncing'} {repository} in project {project_obj}")
        report = sync_repository(repository, adopt=adopt)
        if report.error:
            raise CommandError(f"sync failed: {report.error}")
        self._print(report)
        for name in sorted(set(adopt) - set(report.adopted)):
            self.stderr.write(f"--adopt {name}: nothing to adopt (no such directory, or the package is already "
                              "this repository's)")  # fmt: skip
        problems = len(report.failed) + len(report.conflicts)
        if problems:
            raise CommandError(f"{problems} package director{'y' if problems == 1 else 'ies'} failed or left alone")

    def _check_url(self, url: str, project: str) -> None:
        """The URL policy (packages/git_urls.py), before anything is created."""
        try:
            GitRepository(url=url, project=Project(name=project)).clean()
        except ValidationError as exc:
            raise CommandError(f"URL refused: {' '.join(exc.message_dict['url'])}") from None

    def _print(self, report) -> None:
        self.stdout.write(f"commit {report.commit}")
        for label, names in (("created", report.created), ("updated", report.updated),
                             ("deactivated", report.deactivated)):  # fmt: skip
            for name in names:
                self.stdout.write(f"{label}: {name}")
        for note in report.notes:
            self.stdout.write(f"note: {note}")
        for line in skipped_lines(report.skipped):
            self.stdout.write(f"not imported: {line}")
        for name, error in report.failed.items():
            self.stderr.write(f"failed: {name}: {error}")
        for name, reason in report.conflicts.items():
            self.stderr.write(f"left alone: {name}: {reason} (--adopt {name})")
