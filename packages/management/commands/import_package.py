from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from packages.importer import PackageImportError, import_package_dir


class Command(BaseCommand):
    help = ("Create or update a package from a directory of scripts (FX layout: one directory = one package). "
            "Only regular files directly inside it are read: symbolic links, directories and special files are "
            "listed and skipped.")  # fmt: skip

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--project", help="Project of a new package, or of one that has none (created if "
                            "missing). An existing package of another project is refused.")  # fmt: skip
        parser.add_argument("--detach", action="store_true", help="Import over a package that comes from a Git "
                            "repository, taking it out of the repository (the next sync leaves it alone).")  # fmt: skip

    def handle(self, *args, directory: Path, project: str | None, detach: bool, **options):
        try:
            result = import_package_dir(directory, project_name=project, detach=detach)
        except PackageImportError as exc:
            raise CommandError(str(exc)) from None
        verb = "Created" if result.created else "Updated"
        self.stdout.write(f"{verb} package {result.package.package_name} (id {result.package.pk})")
        for position, name in enumerate(result.files, start=1):
            shipped = "  (shipped, not run: manifest.json does not list it)" if name in result.shipped else ""
            self.stdout.write(f"  {position}. {name}{shipped}")
        if result.secrets:
            self.stdout.write(f"  secrets stored encrypted: {', '.join(result.secrets)} (secrets.json not kept)")
        for note in result.notes:
            self.stdout.write(f"  {note}")
        for line in result.skipped:
            self.stdout.write(f"  not imported: {line}")
