from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from packages.importer import PackageImportError, import_package_dir


class Command(BaseCommand):
    help = "Create or update a package from a directory of scripts (FX layout: one directory = one package)."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--project", help="Project to bind the package to (created if missing).")

    def handle(self, *args, directory: Path, project: str | None, **options):
        try:
            result = import_package_dir(directory, project_name=project)
        except PackageImportError as exc:
            raise CommandError(str(exc)) from None
        verb = "Created" if result.created else "Updated"
        self.stdout.write(f"{verb} package {result.package.package_name} (id {result.package.pk})")
        for position, name in enumerate(result.files, start=1):
            self.stdout.write(f"  {position}. {name}")
        if result.secrets:
            self.stdout.write(f"  secrets stored encrypted: {', '.join(result.secrets)} (secrets.json not kept)")
