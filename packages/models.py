"""The package catalogue: projects, packages and their ordered scripts.

Script content lives in the database, not on a shared disk, so any worker on any machine can run any package
with nothing but a database connection.
"""

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from timezone_field import TimeZoneField

from . import cron

package_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]*\Z",
    "Use lowercase letters, digits, '_' and '-' (starting with a letter or digit), like an FX package directory.",
)
file_name_validator = RegexValidator(
    r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z",
    "A plain file name: letters, digits, '_', '-' and '.', no directories.",
)


env_var_name_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*\Z", "Letters, digits and '_', not starting with a digit (a shell variable name)."
)
# Set by the executor for every step; a package variable may not replace them.
RESERVED_ENV_VARS = frozenset(
    {"PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "PWD", "SHELL", "USER", "SECRETS_API_URL", "SERVICES_API_URL"}
)
# Names that change how programs load or run (the dynamic loader, glibc, shells, interpreters): refused, so a
# package variable can never turn into code running in something the package did not write.
LOADER_ENV_VARS = frozenset({
    "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN", "TZDIR",
    "BASH_ENV", "ENV", "IFS", "CDPATH", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "PERL5LIB", "PERL5OPT",
    "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "OPENSSL_CONF", "OPENSSL_ENGINES", "SSL_CERT_FILE", "SSL_CERT_DIR", "PGSERVICEFILE", "PGPASSFILE",
})  # fmt: skip
RESERVED_ENV_PREFIXES = ("LD_", "LC_", "MALLOC_", "PYTHON", "EXECUTOR_", "CONSUL_", "BASH_FUNC_")


def validate_env_var_name(name: str) -> None:
    env_var_name_validator(name)
    if name in RESERVED_ENV_VARS or name.startswith(("EXECUTOR_", "CONSUL_")):
        raise ValidationError(f"{name} is set by the executor and cannot be overridden.")
    if name in LOADER_ENV_VARS or name.startswith(RESERVED_ENV_PREFIXES):
        raise ValidationError(
            f"{name} changes how programs load or run (the dynamic loader, shells, interpreters) and is not allowed."
        )


def validate_cron(expression: str) -> None:
    try:
        cron.parse(expression)
    except cron.CronError as exc:
        raise ValidationError(str(exc)) from None


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProjectRole(models.TextChoices):
    """What a member may do in a project (packages/access.py holds the table): each role includes the ones above it.

    viewer: see the project's packages, executions, results, events, state. runner: also run, re-run, cancel,
    save and name runs. maintainer: also edit packages, scripts, variables, package secrets, schedules,
    subscriptions and Git repositories. owner: also members, project API keys and project secrets.
    """

    VIEWER = "viewer", "Viewer"
    RUNNER = "runner", "Runner"
    MAINTAINER = "maintainer", "Maintainer"
    OWNER = "owner", "Owner"


class ProjectMembership(models.Model):
    """A user's role in a project. Superusers need none: they see and do everything."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships")
    role = models.CharField(max_length=20, choices=ProjectRole)

    class Meta:
        ordering = ["project__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_role_per_user_and_project")]

    def __str__(self) -> str:
        return f"{self.user} · {self.get_role_display()} of {self.project}"


class AuditEntry(models.Model):
    """Who did what, when: written in the same transaction as the action (packages/audit.py). Never holds step
    output or secret values: `details` names things (fields changed, parameters' keys), it does not copy them."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=200, help_text="Who, in words: a user, an API key, the scheduler.")
    action = models.CharField(max_length=50, db_index=True)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type} {self.object_repr}"


class Tag(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class EventType(models.Model):
    """A registry of event type names; packages subscribe to them (Package.trigger_event_types)."""

    name = models.CharField(max_length=255, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


PARAMETERS_FILE = "parameters.json"  # FX run form definition (packages/run_forms.py)


class MissedRunPolicy(models.TextChoices):
    """What the reaper does with a fire time whose tick never arrived (executions/catch_up.py)."""

    CATCH_UP = "catch_up", "Catch up once: run the latest missed time, late"
    SKIP = "skip", "Skip: record it as a skipped execution, run nothing"


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
    tags = models.ManyToManyField(Tag, blank=True, related_name="packages")
    schedule = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_cron],
        help_text="Cron: minute hour day-of-month month day-of-week. Day of week 0 = Monday ... 6 = Sunday. "
        "Example: 20 * * * * (every hour at :20). Empty: not scheduled.",
    )
    timezone = TimeZoneField(default="UTC", use_pytz=False, help_text="The schedule's time zone.")
    trigger_event_types = models.ManyToManyField(
        EventType, blank=True, related_name="subscribers", help_text="Events of these types start the package."
    )
    missed_runs = models.CharField(
        "missed runs",
        max_length=20,
        choices=MissedRunPolicy,
        default=MissedRunPolicy.CATCH_UP,
        help_text="A scheduled time whose run did not start (beat down, or the broker unreachable at that minute) "
        "is noticed within seconds. Catch up once (the default: losing a nightly run is usually the worse harm) "
        "runs the latest missed time once; Skip records it as a skipped execution instead, for packages that must "
        "not run late. Only the latest missed time counts, never a backlog.",
    )
    # When the current schedule (cron, zone, being enabled) took effect: fire times before it are never caught up.
    # Kept by packages/schedules.py:sync_package_schedule.
    schedule_since = models.DateTimeField(null=True, blank=True, editable=False)
    active = models.BooleanField(default=True)
    allow_manual_triggering = models.BooleanField(default=True)
    priority = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="1 highest ... 10 lowest. 1-3 run on the priority lane, 4-7 default, 8-10 slow.",
    )
    step_timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: the executor's default."
    )
    network_access = models.BooleanField(
        default=False, help_text="Let Python steps use the network (SQL steps always reach their database)."
    )
    warm_steps = models.BooleanField(
        default=True,
        help_text="Start Python steps from a warm, pre-imported interpreter (much faster). Turn off for a script "
        "that needs a fresh interpreter of its own, e.g. for a C extension's global state.",
    )
    continue_on_failure = models.BooleanField(
        "continue after a failed step", default=False, help_text="Run the remaining steps after a failure."
    )
    retries_after_worker_loss = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(5)],
        help_text="How often a step cut off by a worker that died or shut down runs again on another worker. "
        "Leave 0 (the step fails with 'worker lost') unless every script is safe to run twice.",
    )
    entrypoint = models.CharField(
        max_length=200, blank=True, help_text="If set, only this file runs; the other files are shipped with it."
    )
    output_events = models.JSONField(default=list, blank=True, help_text="Informational (manifest.json).")
    # Retention (executions/retention.py): empty means the executor's setting, so a change of the setting reaches
    # every package that did not choose otherwise.
    keep_days = models.PositiveIntegerField(
        "keep executions (days)", null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Finished executions older than this are deleted, with their output and files. "
        "Empty: the executor's default (EXECUTOR_RETENTION_DAYS, 30).",
    )  # fmt: skip
    keep_failed_days = models.PositiveIntegerField(
        "keep failed executions (days)", null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Failed executions are kept this long (never less than the days above). "
        "Empty: the executor's default (EXECUTOR_RETENTION_FAILED_DAYS, 90).",
    )  # fmt: skip
    keep_last = models.PositiveIntegerField(
        "always keep the last", null=True, blank=True,
        help_text="The package's newest executions that are never deleted, however old. "
        "Empty: the executor's default (EXECUTOR_RETENTION_KEEP_LAST, 20).",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    git_repository = models.ForeignKey(
        "GitRepository", null=True, blank=True, on_delete=models.SET_NULL, related_name="packages", editable=False
    )
    source_commit = models.CharField(
        max_length=64, blank=True, editable=False, help_text="The Git commit the scripts came from."
    )

    class Meta:
        ordering = ["name"]
        permissions = [("run_package", "Can run packages (Run button, run_package)")]

    def __str__(self) -> str:
        return self.name

    def scripts_that_run(self) -> models.QuerySet:
        """The files a run has a step for, in run order; the other files are only shipped beside them (Script)."""
        scripts = self.scripts.filter(runs=True).order_by("position", "file_name")
        return scripts.filter(file_name=self.entrypoint) if self.entrypoint else scripts

    @property
    def has_run_form(self) -> bool:
        return self.scripts.filter(file_name=PARAMETERS_FILE).exists()

    def clean(self) -> None:
        limit = settings.EXECUTOR_MAX_EXECUTION_SECONDS
        if self.step_timeout_seconds and self.step_timeout_seconds > limit:
            # Above it, Redis would redeliver the run's message while the step still runs.
            raise ValidationError({"step_timeout_seconds": f"At most {limit} s (EXECUTOR_MAX_EXECUTION_SECONDS)."})

    @property
    def lane(self) -> str:
        """The Celery queue for this package's manual and triggered runs (scheduled runs use `scheduled`)."""
        if self.priority <= 3:
            return "priority"
        return "default" if self.priority <= 7 else "slow"

    @property
    def effective_step_timeout(self) -> int:
        return self.step_timeout_seconds or settings.EXECUTOR_STEP_TIMEOUT_SECONDS


class ScriptKind(models.TextChoices):
    PYTHON = "python", "Python"
    SQL = "sql", "SQL"
    CONFIG = "config", "Configuration"
    OTHER = "other", "Other file"


_KIND_BY_SUFFIX = {".py": ScriptKind.PYTHON, ".sql": ScriptKind.SQL, ".json": ScriptKind.CONFIG}


def kind_for_file_name(file_name: str) -> ScriptKind:
    return _KIND_BY_SUFFIX.get(PurePosixPath(file_name).suffix.lower(), ScriptKind.OTHER)


class Script(models.Model):
    """One file of a package. Every file is copied into the run's package directory; each file that `runs`
    becomes a step (files without a handler end up `unprocessed`). The others are support files: modules the
    steps import, data they read.

    A manifest decides which files run (packages/importer.py): its `entrypoint`, else its `execution_order`, as on
    FX; without either, every file runs in position order, as uploads always have. A package's `entrypoint` (set
    in the admin too) narrows the steps to that one file whatever `runs` says.
    """

    package = models.ForeignKey(Package, on_delete=models.CASCADE, related_name="scripts")
    position = models.PositiveIntegerField(default=0, help_text="Run order: lower runs first.")
    file_name = models.CharField(max_length=200, validators=[file_name_validator])
    content = models.BinaryField()
    runs = models.BooleanField(
        default=True, help_text="Runs as a step. Unset: a support file, shipped beside the steps but not run."
    )
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

    @property
    def is_step(self) -> bool:
        """Whether a run has a step for this file (Package.scripts_that_run, for one file)."""
        entrypoint = self.package.entrypoint
        return self.runs and (not entrypoint or self.file_name == entrypoint)


class StagedUpload(models.Model):
    """A script file chosen in a package form that failed validation, kept so the person need not choose it
    again (packages/staged_uploads.py). Owned by whoever uploaded it, reachable only through a signed token in
    their re-rendered form, consumed by the save that stores it, and swept by the reaper once it expires. Never a
    secrets.json: secrets are not stored in clear, so that file is chosen again."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    file_name = models.CharField(max_length=200, validators=[file_name_validator])
    content = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.file_name

    @property
    def size(self) -> int:
        return len(self.content)


class EnvironmentVariable(models.Model):
    package = models.ForeignKey(Package, on_delete=models.CASCADE, related_name="environment_variables")
    name = models.CharField(max_length=200, validators=[validate_env_var_name])
    value = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["package", "name"], name="env_var_name_unique_per_package")]

    def __str__(self) -> str:
        return self.name


class SecretScope(models.TextChoices):
    PACKAGE = "package", "Package"
    PROJECT = "project", "Project"
    PLATFORM = "platform", "Platform"


secret_name_validator = RegexValidator(r"^[A-Za-z0-9_.-]+\Z", "Letters, digits, '_', '.' and '-'.")


class Secret(models.Model):
    """A named secret, encrypted at rest (packages/encryption.py). The value is never shown again after saving.

    Scripts get the secrets of their package, their project and the platform in argv[1]["secrets"]; a package
    secret wins over a project secret of the same name, which wins over a platform secret.
    """

    scope = models.CharField(max_length=20, choices=SecretScope)
    package = models.ForeignKey(Package, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=200, validators=[secret_name_validator])
    encrypted_value = models.TextField(editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["package", "name"], condition=models.Q(scope="package"), name="secret_unique_per_package"
            ),
            models.UniqueConstraint(
                fields=["project", "name"], condition=models.Q(scope="project"), name="secret_unique_per_project"
            ),
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(scope="platform"), name="secret_unique_platform"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(scope="package", package__isnull=False, project__isnull=True)
                    | models.Q(scope="project", project__isnull=False, package__isnull=True)
                    | models.Q(scope="platform", project__isnull=True, package__isnull=True)
                ),
                name="secret_owner_matches_scope",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def set_value(self, value: str) -> None:
        from .encryption import encrypt

        self.encrypted_value = encrypt(value)

    def reveal(self) -> str:
        from .encryption import decrypt

        return decrypt(self.encrypted_value)


def secrets_for(package: Package) -> dict[str, str]:
    """Decrypted secrets a run of `package` receives: platform, then project, then package (later wins)."""
    scoped = models.Q(scope=SecretScope.PLATFORM) | models.Q(scope=SecretScope.PACKAGE, package=package)
    if package.project_id:
        scoped |= models.Q(scope=SecretScope.PROJECT, project_id=package.project_id)
    rank = {SecretScope.PLATFORM: 0, SecretScope.PROJECT: 1, SecretScope.PACKAGE: 2}
    found = sorted(Secret.objects.filter(scoped), key=lambda secret: rank[secret.scope])
    return {secret.name: secret.reveal() for secret in found}


class PlatformSecret(Secret):
    """Platform-wide secrets (every package sees them unless its project or itself has one of the same name)."""

    class Meta:
        proxy = True
        verbose_name = "platform secret"


def store_package_secrets(package: Package, values: dict[str, str]) -> None:
    """Create or replace package secrets from a name -> value mapping (secrets.json)."""
    for name, value in values.items():
        secret = Secret.objects.filter(scope=SecretScope.PACKAGE, package=package, name=name).first()
        secret = secret or Secret(scope=SecretScope.PACKAGE, package=package, name=name)
        secret.set_value(value)
        secret.save()


class PackageState(models.Model):
    """FX `context.state`: a JSON object kept per package across runs (packages/state.py merges the changes)."""

    package = models.OneToOneField(Package, primary_key=True, on_delete=models.CASCADE, related_name="state")
    data = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"state of {self.package}"


class GitAuth(models.TextChoices):
    NONE = "none", "None (public, or a local path)"
    DEPLOY_KEY = "deploy_key", "Deploy key (SSH)"
    HTTPS_TOKEN = "https_token", "HTTPS token"


class GitSyncStatus(models.TextChoices):
    NEVER = "never", "Never synced"
    SYNCING = "syncing", "Syncing"
    OK = "ok", "Synced"
    PARTIAL = "partial", "Synced with errors"
    FAILED = "failed", "Failed"


class GitRepository(models.Model):
    """A Git repository of a project: each top-level directory of its branch is a package (packages/git_sync.py).

    Credentials are encrypted like secrets and never shown: the deploy key's private half, an HTTPS token, and the
    webhook secret that push notifications are proven with (packages/git_credentials.py).
    """

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="repositories")
    url = models.CharField(
        "URL", max_length=500, help_text="git@host:org/repo.git, https://host/org/repo.git, file:///path or a path."
    )
    branch = models.CharField(
        max_length=200,
        blank=True,
        help_text="Empty: the repository's default branch (its HEAD), filled in by the first sync.",
    )
    auth = models.CharField("authentication", max_length=20, choices=GitAuth, default=GitAuth.NONE)
    deploy_public_key = models.TextField(blank=True, editable=False)
    deploy_private_key_encrypted = models.TextField(blank=True, editable=False)
    https_token_encrypted = models.TextField(blank=True, editable=False)
    webhook_secret_encrypted = models.TextField(blank=True, editable=False)
    branches = models.JSONField(default=list, blank=True, editable=False, help_text="Found on the last sync.")
    status = models.CharField(max_length=20, choices=GitSyncStatus, default=GitSyncStatus.NEVER, editable=False)
    last_sync_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    current_commit = models.CharField(max_length=64, blank=True, editable=False)
    last_report = models.JSONField(default=dict, blank=True, editable=False)
    # Credentials are bound to the host they were given for: a token is never sent to another host, and the SSH
    # host key pinned on the first sync is the only one accepted afterwards (packages/git_sync.py).
    credentials_host = models.CharField(max_length=255, blank=True, editable=False)
    ssh_known_hosts = models.TextField("pinned SSH host key", blank=True, editable=False)

    class Meta:
        ordering = ["project__name", "url"]
        verbose_name_plural = "Git repositories"
        constraints = [models.UniqueConstraint(fields=["project", "url"], name="repository_unique_per_project")]

    def __str__(self) -> str:
        return f"{self.url} ({self.branch or 'default branch'})"

    def clean(self) -> None:
        """The URL policy of packages/git_urls.py (resolving the host now; the sync checks again), and a URL the
        chosen authentication can be used with."""
        from .git_urls import HTTPS, SSH, UnsafeGitUrl, check_url

        try:
            url = check_url(self.url)
        except UnsafeGitUrl as exc:
            raise ValidationError({"url": str(exc)}) from None
        if self.auth == GitAuth.HTTPS_TOKEN and url.kind != HTTPS:
            raise ValidationError({"url": "HTTPS token authentication needs an https:// URL."})
        if self.auth == GitAuth.DEPLOY_KEY and url.kind != SSH:
            raise ValidationError({"url": "Deploy key authentication needs an ssh:// or git@host:org/repo.git URL."})


class SqlConnection(models.Model):
    """A database that SQL steps may connect to, defined by an administrator. Packages name it (config.json key
    `sql_connection`); they never supply a URL. The URL, password included, is encrypted at rest and never shown.
    """

    name = models.CharField(max_length=100, unique=True, validators=[package_name_validator])
    description = models.TextField(blank=True)
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="sql_connections",
        help_text="Only this project's packages may use it. Empty: every package.",
    )
    url_encrypted = models.TextField(editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "SQL connection"

    def __str__(self) -> str:
        return self.name
