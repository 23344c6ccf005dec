import json
import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from executions.catch_up import recent_missed
from executions.models import ExecutionStatus, TriggerType
from executions.queueing import admin_message
from executions.run_pages import run_form_page
from executions.services import TriggerRefused, trigger_execution
from executor_project.widgets import SuggestingInput

from . import access
from . import state as package_state
from .access import Action
from .access_admin import MissingIsNotFound, PlatformAdmin, ProjectScopedAdmin, ProjectScopedInline
from .admin_filters import ProjectListFilter
from .audit_admin import AuditedAdminMixin
from .forms import ScriptInlineForm, ScriptInlineFormSet
from .models import (
    EnvironmentVariable,
    EventType,
    Package,
    PlatformSecret,
    Project,
    ProjectMembership,
    Script,
    Secret,
    SecretScope,
    Tag,
    store_package_secrets,
)
from .schedule_preview import UNKNOWN_ZONE, preview_answer, schedule_preview_html
from .secret_forms import (
    PackageSecretForm,
    PlatformSecretForm,
    ProjectSecretForm,
    UniqueNamesFormSet,
    read_secrets_file,
)
from .trigger_events import INTERNAL_EVENT_TYPES, trigger_event_for


class SecretInlineBase(admin.TabularInline):
    model = Secret
    formset = UniqueNamesFormSet
    extra = 1
    fields = ["name", "value", "updated_at"]
    readonly_fields = ["updated_at"]
    verbose_name_plural = "Secrets (write-only: values are never shown again)"


class PackageSecretInline(ProjectScopedInline, SecretInlineBase):
    form = PackageSecretForm
    fk_name = "package"


class ProjectSecretInline(ProjectScopedInline, SecretInlineBase):
    """Members see the names (never a value); only owners write them."""

    form = ProjectSecretForm
    fk_name = "project"
    edit_action = Action.MANAGE


class MembershipForm(forms.ModelForm):
    # A username to type rather than a list to pick from: an owner adds people they know, and the page never
    # lists every account on the platform.
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True),
        to_field_name="username",
        widget=forms.TextInput,
        label="Username",
        error_messages={"invalid_choice": "No active user has this username."},
    )

    class Meta:
        model = ProjectMembership
        fields = ["user", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:  # the initial value is the user's pk; the field shows and compares usernames
            self.initial["user"] = self.instance.user.get_username()


class MembershipInline(ProjectScopedInline, admin.TabularInline):
    """Members and their roles: every member sees them, owners change them."""

    model = ProjectMembership
    form = MembershipForm
    extra = 0
    verbose_name = "member"
    verbose_name_plural = "Members (viewer: sees; runner: also runs; maintainer: also edits; owner: also members, "
    verbose_name_plural += "API keys and project secrets)"
    edit_action = Action.MANAGE


@admin.register(Project)
class ProjectAdmin(AuditedAdminMixin, MissingIsNotFound, admin.ModelAdmin):
    """Members see their projects; owners edit them, their members and secrets; only superusers create or delete
    projects (a project is a unit of access, not something a member hands themselves)."""

    inlines = [MembershipInline, ProjectSecretInline]
    list_display = ["name", "description", "package_count"]
    search_fields = ["name"]
    fields = ["name", "description"]

    def get_queryset(self, request):
        projects = access.scoped(super().get_queryset(request), request.user, Action.VIEW, path="pk")
        # An aggregate drops Meta.ordering: order explicitly, or autocomplete pages an unordered list.
        return projects.annotate(package_total=Count("packages")).order_by("name")

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return access.can(request.user, Action.VIEW, obj) if obj else access.can_anywhere(request.user, Action.VIEW)

    def has_add_permission(self, request) -> bool:
        return access.is_superuser(request.user)

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, Action.MANAGE)
        return access.can(request.user, Action.MANAGE, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["may_read_audit_log"] = obj is not None and access.can(request.user, Action.EDIT, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_formset(self, request, form, formset, change) -> None:
        super().save_formset(request, form, formset, change)
        if formset.model is ProjectMembership:
            # A member logs in through the admin, which takes staff accounts only. Staff alone grants nothing:
            # every page asks the role table.
            for membership in formset.new_objects + [obj for obj, _ in formset.changed_objects]:
                _make_staff(membership.user)

    @admin.display(description="Packages", ordering="package_total")
    def package_count(self, project: Project) -> int:
        return project.package_total


def _make_staff(user) -> None:
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])


@admin.register(PlatformSecret)
class PlatformSecretAdmin(AuditedAdminMixin, PlatformAdmin):
    form = PlatformSecretForm
    list_display = ["name", "updated_at"]
    search_fields = ["name"]
    fields = ["name", "value"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(scope=SecretScope.PLATFORM)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    """Tags are shared by every project: members see them and maintainers add them; renaming or deleting one
    would change other projects' packages, so that is for superusers."""

    list_display = ["name"]
    search_fields = ["name"]

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_add_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.EDIT)

    def has_change_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)

    def has_delete_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)


@admin.register(EventType)
class EventTypeAdmin(PlatformAdmin):
    """The global registry, with every project's subscribers: superusers only. A package's form still offers every
    event type as a choice, names being shared across projects."""

    list_display = ["name", "subscriber_list", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["subscriber_list"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("subscribers")

    @admin.display(description="Subscribed packages")
    def subscriber_list(self, event_type: EventType) -> str:
        return ", ".join(package.name for package in event_type.subscribers.all()) or "—"


class ScriptInline(ProjectScopedInline, admin.TabularInline):
    model = Script
    form = ScriptInlineForm
    formset = ScriptInlineFormSet
    extra = 1
    fields = ["position", "file_name", "kind_display", "runs_display", "size_display", "download", "upload", "staged"]
    readonly_fields = ["file_name", "kind_display", "runs_display", "size_display", "download"]
    ordering = ["position", "file_name"]

    @admin.display(description="Kind")
    def kind_display(self, script: Script) -> str:
        return script.kind.label if script.pk else ""

    @admin.display(description="Runs")
    def runs_display(self, script: Script) -> str:
        """Which files are steps and which are only shipped beside them (Script, Package.scripts_that_run)."""
        if not script.pk:
            return ""
        if script.is_step:
            return "Runs"
        entrypoint = script.package.entrypoint
        why = f"only the entrypoint {entrypoint} runs" if entrypoint else "manifest.json does not list it to run"
        return format_html('<span title="{}">Shipped only</span>', f"Copied beside the steps, not run: {why}.")

    @admin.display(description="Size")
    def size_display(self, script: Script) -> str:
        return f"{script.size} bytes" if script.pk else ""

    @admin.display(description="")
    def download(self, script: Script) -> str:
        if not script.pk:
            return ""
        return format_html('<a href="{}">Download</a>', reverse("admin:packages_script_download", args=[script.pk]))


class EnvironmentVariableInline(ProjectScopedInline, admin.TabularInline):
    model = EnvironmentVariable
    formset = UniqueNamesFormSet
    extra = 0
    fields = ["name", "value"]


class PackageForm(forms.ModelForm):
    new_tags = forms.CharField(
        required=False, help_text="Comma-separated tags to create and add, besides the ones picked above."
    )
    secrets_file = forms.FileField(
        required=False,
        label="Import secrets.json",
        help_text="A JSON object of names to values; stored encrypted as package secrets, the file is not kept: "
        "if the form fails to save, choose it again (unlike scripts, it is never kept between attempts).",
    )

    class Meta:
        model = Package
        fields = [
            "name", "package_name", "description", "project", "tags", "schedule", "timezone", "missed_runs",
            "trigger_event_types", "allow_manual_triggering", "active", "priority", "step_timeout_seconds",
            "network_access", "warm_steps", "continue_on_failure", "retries_after_worker_loss", "entrypoint",
            "keep_days", "keep_failed_days", "keep_last",
        ]  # fmt: skip
        # A time zone is typed with suggestions ("Berl"), not picked from a 600-option select.
        widgets = {
            "missed_runs": forms.RadioSelect,
            "timezone": SuggestingInput(attrs={"autocomplete": "off", "size": 30}),
        }
        error_messages = {"timezone": {"invalid_choice": UNKNOWN_ZONE}}
        help_texts = {"timezone": "The schedule's time zone: type a few letters of a city (e.g. Berl) and pick one."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "trigger_event_types" in self.fields:
            # Internal types are not offered; one a package already has stays, or saving would drop it unasked.
            field = self.fields["trigger_event_types"]
            kept = Q(subscribers=self.instance.pk) if self.instance.pk else Q(pk__in=[])
            field.queryset = field.queryset.filter(~Q(name__in=INTERNAL_EVENT_TYPES) | kept).distinct()
        # Forms posted by clients written before the policy existed keep working: absent means unchanged.
        if self.is_bound and "missed_runs" in self.fields and "missed_runs" not in self.data:
            self.data = self.data.copy()
            self.data["missed_runs"] = self.instance.missed_runs

    def clean_new_tags(self) -> list[str]:
        return [name.strip() for name in self.cleaned_data["new_tags"].split(",") if name.strip()]

    def clean_secrets_file(self) -> dict[str, str]:
        return read_secrets_file(self.cleaned_data.get("secrets_file"))


class ScheduledFilter(admin.SimpleListFilter):
    title = "scheduled"
    parameter_name = "scheduled"

    def lookups(self, request, model_admin):
        return [("yes", "Scheduled"), ("no", "Not scheduled")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(schedule="")
        if self.value() == "no":
            return queryset.filter(schedule="")
        return queryset


@admin.register(Package)
class PackageAdmin(AuditedAdminMixin, ProjectScopedAdmin):
    """Members see their projects' packages (read-only, state included); maintainers and owners edit them;
    runners and above run them."""

    form = PackageForm
    inlines = [ScriptInline, EnvironmentVariableInline, PackageSecretInline]
    list_display = ["name", "project", "tag_list", "script_count", "schedule", "active", "priority", "run"]
    list_filter = [
        ("project", ProjectListFilter),
        "tags",
        "active",
        ScheduledFilter,
        ("trigger_event_types", admin.RelatedOnlyFieldListFilter),  # only the types the user's packages use
    ]
    list_select_related = ["project"]
    search_fields = ["name", "package_name", "description"]
    prepopulated_fields = {"package_name": ["name"]}
    filter_horizontal = ["tags", "trigger_event_types"]
    readonly_fields = ["schedule_preview", "missed_run_list", "trigger_event", "fx_state", "git_source"]
    fieldsets = [
        (None, {"fields": ["name", "package_name", "description", "project", "tags", "new_tags", "secrets_file"]}),
        (
            "Triggers",
            {
                "fields": [
                    "schedule",
                    "timezone",
                    "schedule_preview",
                    "missed_runs",
                    "missed_run_list",
                    "trigger_event_types",
                    "allow_manual_triggering",
                    "active",
                ]
            },
        ),
        (
            "Execution",
            {
                "fields": [
                    "priority",
                    "step_timeout_seconds",
                    "network_access",
                    "warm_steps",
                    "continue_on_failure",
                    "retries_after_worker_loss",
                    "entrypoint",
                ]  # fmt: skip
            },
        ),
        ("Retention (empty: the executor's defaults)", {"fields": ["keep_days", "keep_failed_days", "keep_last"]}),
        ("Show Trigger Event", {"classes": ["collapse"], "fields": ["trigger_event"]}),
        ("State", {"classes": ["collapse"], "fields": ["fx_state"]}),
        ("Source", {"classes": ["collapse"], "fields": ["git_source"]}),
    ]

    def get_queryset(self, request):
        packages = super().get_queryset(request).annotate(script_total=Count("scripts")).prefetch_related("tags")
        return packages.order_by("name")  # (as for projects: the aggregate drops Meta.ordering)

    @admin.display(description="Scripts", ordering="script_total")
    def script_count(self, package: Package) -> int:
        return package.script_total

    @admin.display(description="Tags")
    def tag_list(self, package: Package) -> str:
        return ", ".join(tag.name for tag in package.tags.all())

    @admin.display(description="In words, next runs")
    def schedule_preview(self, package: Package) -> str:
        return schedule_preview_html(package.schedule, package.timezone, timezone.now())

    @admin.display(description="Missed runs, last 7 days")
    def missed_run_list(self, package: Package) -> str:
        """Fire times whose tick never came (executions/catch_up.py): caught up late, or recorded as skipped."""
        if not package.pk:
            return "—"
        runs = recent_missed(package, timezone.now())
        if not runs:
            return "None: every scheduled time had its run."
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> {}: {}</li>',
            (
                (reverse("admin:executions_execution_change", args=[run.pk]), run.short_id,
                 run.get_status_display().lower(), run.description if run.description else run.status_reason)
                for run in runs
            ),
        )  # fmt: skip
        skipped = reverse("admin:executions_execution_changelist")
        return format_html('<ul>{}</ul><p class="help"><a href="{}?package__id__exact={}&amp;status__exact={}">'
                           "All skipped runs of this package</a></p>", rows, skipped, package.pk,
                           ExecutionStatus.SKIPPED)  # fmt: skip

    @admin.display(description="Event that starts this package")
    def trigger_event(self, package: Package) -> str:
        if not package.pk:
            return "Save the package first."
        event = trigger_event_for(package, event_id=uuid.uuid4().hex, time=timezone.now())
        return format_html(
            '<pre class="executor-output">{}</pre><p class="help">POST it to {} with <code>Content-Type: {}</code> '
            "and an <code>X-API-KEY</code> header (API keys). Keys added to <code>data</code> reach the scripts as "
            "parameters. The id is new on every page load: the same id sent twice starts the package once.</p>",
            json.dumps(event, indent=2),
            reverse("fx:events"),
            "application/cloudevents+json",
        )

    @admin.display(description="Git")
    def git_source(self, package: Package) -> str:
        if not package.git_repository_id:
            return "Uploaded or imported (not from a Git repository)."
        url = reverse("admin:packages_gitrepository_change", args=[package.git_repository_id])
        return format_html('<a href="{}">{}</a> at commit <code>{}</code>. A sync replaces edits made here.',
                           url, package.git_repository, package.source_commit[:12])  # fmt: skip

    @admin.display(description="context.state")
    def fx_state(self, package: Package) -> str:
        if not package.pk:
            return "—"
        return format_html('<pre class="executor-output">{}</pre><p class="help">What the package\'s scripts keep '
                           "with FX's context.state.put, saved after each step.</p>",
                           json.dumps(package_state.load(package), indent=2))  # fmt: skip

    @admin.display(description="")
    def run(self, package: Package) -> str:
        """The class-level column; get_list_display swaps in one that knows who is looking."""
        return ""

    def get_list_display(self, request):
        return [
            _run_column(request.user) if column == "run" else column for column in super().get_list_display(request)
        ]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project" and not access.is_superuser(request.user):
            kwargs["required"] = True  # a package of no project is the platform's: only superusers make one
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, ScriptInline):  # a row may use the files its poster's failed save kept, no others
            kwargs["form_kwargs"] = {**kwargs.get("form_kwargs", {}), "owner": request.user}
        return kwargs

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["may_run"] = obj is not None and access.can(request.user, Action.RUN, obj)
        if request.method == "POST":  # a POST is rendered only when the save failed
            self._keep_what_was_chosen(context)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _keep_what_was_chosen(self, context) -> None:
        """After a failed save, nothing chosen is lost silently: every valid script file is kept for the resubmit
        (packages/staged_uploads.py); a secrets.json cannot be (it would be a secret in clear at rest), and its
        field says so."""
        for inline_formset in context["inline_admin_formsets"]:
            if isinstance(inline_formset.formset, ScriptInlineFormSet):
                inline_formset.formset.keep_uploads()
        form = context["adminform"].form
        if form.files.get("secrets_file") and "secrets_file" not in form.errors:
            form.add_error("secrets_file", "Not kept: choose secrets.json again before saving (secrets are never "
                                           "stored unencrypted, so a failed save cannot keep the file).")  # fmt: skip

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        package = form.instance
        package.tags.add(*[Tag.objects.get_or_create(name=name)[0] for name in form.cleaned_data["new_tags"]])
        store_package_secrets(package, form.cleaned_data["secrets_file"])

    def get_urls(self):
        return [
            path("<int:package_id>/run/", self.admin_site.admin_view(self.run_view), name="packages_package_run"),
            path(
                "schedule-preview/",
                self.admin_site.admin_view(self.schedule_preview_view),
                name="packages_package_schedule_preview",
            ),
            path(
                "scripts/<int:script_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="packages_script_download",
            ),
            *super().get_urls(),
        ]

    def run_view(self, request, package_id: int):
        """GET: confirm (or the run form of a package with parameters.json); POST: start a manual execution and
        show the package's executions (or the new execution, after a form)."""
        # Another project's package is not there (404); one the user may see but not run is refused (403).
        package = Package.objects.filter(pk=package_id).first()
        access.require(request.user, Action.RUN, package, f"package {package_id}")
        if package.has_run_form:  # a form instead of a plain Run
            return run_form_page(request, self.admin_site, package)
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "package": package,
                "opts": self.opts,
                "title": f"Run {package.name}",
            }
            return TemplateResponse(request, "admin/packages/package/run_confirm.html", context)
        try:
            execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, user=request.user)
        except TriggerRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(reverse("admin:packages_package_change", args=[package.pk]))
        messages.add_message(request, *admin_message(execution, f"Execution {execution.short_id} of {package.name}"))
        url = reverse("admin:executions_execution_changelist")
        return HttpResponseRedirect(f"{url}?package__id__exact={package.pk}")

    def schedule_preview_view(self, request):
        """GET ?schedule=&timezone=: the form's "In words, next runs" for what is typed, before it is saved
        (schedule_preview.preview_answer), for the form's script. For whoever may add or change a package."""
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        if request.method != "GET":
            return JsonResponse({"error": "Use GET."}, status=405, headers={"Allow": "GET"})
        status, body = preview_answer(request.GET.get("schedule", ""), request.GET.get("timezone", ""), timezone.now())
        return JsonResponse(body, status=status)

    def download_view(self, request, script_id: int):
        scripts = access.scoped(Script.objects.all(), request.user, Action.VIEW, path="package__project")
        script = get_object_or_404(scripts, pk=script_id)
        response = HttpResponse(bytes(script.content), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{script.file_name}"'
        return response


def _run_column(user):
    """The list's Run button, shown only on packages the user may run (and that can be run by hand)."""
    runnable = access.project_ids(user, Action.RUN)

    @admin.display(description="")
    def run(package: Package) -> str:
        if not (package.active and package.allow_manual_triggering):
            return ""
        if runnable is not None and package.project_id not in runnable:
            return ""
        url = reverse("admin:packages_package_run", args=[package.pk])
        return format_html('<a class="button" href="{}">Run</a>', url)

    return run


def _platform_only(*models) -> None:
    """Re-register `models` with their current admin class made superuser-only: a project member must never edit
    schedules (beat would run them) or accounts behind the role table, whatever model permissions they hold."""
    for model in models:
        current = type(admin.site.get_model_admin(model))
        if issubclass(current, PlatformAdmin):
            continue
        admin.site.unregister(model)
        admin.site.register(model, type(f"Platform{current.__name__}", (PlatformAdmin, current), {}))


_platform_only(PeriodicTask, CrontabSchedule, IntervalSchedule, ClockedSchedule, SolarSchedule, get_user_model(), Group)

from . import git_admin  # noqa: F401, E402  (registers GitRepositoryAdmin)
from .sql_connection_admin import SqlConnectionAdmin  # noqa: F401, E402  (registers it)
