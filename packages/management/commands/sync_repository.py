from django.core.management.base import BaseCommand, CommandError

from packages.git_sync import sync_repository
from packages.models import GitRepository, Project


class Command(BaseCommand):
    help = ("Add a Git repository to a project if it is new, sync it, and print what was created, updated, "
            "deactivated or failed. Exits non-zero if anything failed.")  # fmt: skip

    def add_arguments(self, parser):
        parser.add_argument("url", help="git@host:org/repo.git, https://..., file:///path or a path")
        parser.add_argument("--project", required=True, help="the project's name (created if new)")
        parser.add_argument("--branch", help="the branch to sync (default: the repository's, or main if new)")

    def handle(self, url, project, branch, **options):
        project_obj, _ = Project.objects.get_or_create(name=project)
        repository, created = GitRepository.objects.select_related("project").get_or_create(
            project=project_obj, url=url, defaults={"branch": branch or "main"}
        )
        if branch and repository.branch != branch:
            repository.branch = branch
            repository.save(update_fields=["branch"])
        self.stdout.write(f"{'Added' if created else 'Syncing'} {repository} in project {project_obj}")
        report = sync_repository(repository)
        if report.error:
            raise CommandError(f"sync failed: {report.error}")
        self.stdout.write(f"commit {report.commit}")
        for label, names in (("created", report.created), ("updated", report.updated),
                             ("deactivated", report.deactivated)):  # fmt: skip
            for name in names:
                self.stdout.write(f"{label}: {name}")
        for name, error in report.failed.items():
            self.stderr.write(f"failed: {name}: {error}")
        if report.failed:
            raise CommandError(
                f"{len(report.failed)} package director{'y' if len(report.failed) == 1 else 'ies'} failed"
            )
