"""The package catalogue: projects, packages and their ordered scripts.

Script content lives in the database, not on a shared disk, so any worker on any machine can run any package
with nothing but a database connection.
"""

from pathlib import PurePosixPath

from django.core.validators import RegexValidator
from django.db import models

package_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]*\Z",
    "Use lowercase letters, digits, '_' and '-' (starting with a letter or digit), like an FX package directory.",
)
file_name_validator = RegexValidator(
    r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z",
    "A plain file name: letters, digits, '_', '-' and '.', no directories.",
)


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Package(models.Model):
    name = models.CharField(max_length=200)
    package_name = models.CharField(
        "technical name",
        max_length=100,
        unique=True,
        validators=[package_name_validator],
        help_text="Stable identifier: the config key scripts read and the name events use. Do not rename.",
    )
    description = models.TextField(blank=True)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="packages")
    active = models.BooleanField(default=True)
    allow_manual_triggering = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("run_package", "Can run packages (Run button, run_package)")]

    def __str__(self) -> str:
        return self.name

    @property
    def lane(self) -> str:
        """The Celery queue this package's executions go to (priorities map onto lanes in a later issue)."""
        return "default"


class ScriptKind(models.TextChoices):
    PYTHON = "python", "Python"
    SQL = "sql", "SQL"
    CONFIG = "config", "Configuration"
    OTHER = "other", "Other file"


_KIND_BY_SUFFIX = {".py": ScriptKind.PYTHON, ".sql": ScriptKind.SQL, ".json": ScriptKind.CONFIG}


def kind_for_file_name(file_name: str) -> ScriptKind:
    return _KIND_BY_SUFFIX.get(PurePosixPath(file_name).suffix.lower(), ScriptKind.OTHER)


class Script(models.Model):
    """One file of a package. Every file becomes a step; files without a handler end up `unprocessed`."""

    package = models.ForeignKey(Package, on_delete=models.CASCADE, related_name="scripts")
    position = models.PositiveIntegerField(default=0, help_text="Run order: lower runs first.")
    file_name = models.CharField(max_length=200, validators=[file_name_validator])
    content = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["package", "position", "file_name"]
        constraints = [
            models.UniqueConstraint(fields=["package", "file_name"], name="script_file_name_unique_per_package")
        ]

    def __str__(self) -> str:
        return self.file_name

    @property
    def kind(self) -> ScriptKind:
        return kind_for_file_name(self.file_name)

    @property
    def size(self) -> int:
        return len(self.content)
