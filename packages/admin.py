import json
import uuid

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from executions.models import TriggerType
from executions.run_pages import run_form_page
from executions.services import TriggerRefused, trigger_execution

from . import state as package_state
from .forms import ScriptInlineForm, ScriptInlineFormSet
from .models import (
    EnvironmentVariable,
    EventType,
    Package,
    PlatformSecret,
    Project,
    Script,
    Secret,
    SecretScope,
    Tag,
    store_package_secrets,
)
from .schedule_preview import schedule_preview_html
from .schedules import remove_package_schedule, sync_package_schedule
from .secret_forms import (
    PackageSecretForm,
    PlatformSecretForm,
    ProjectSecretForm,
    UniqueNamesFormSet,
    read_secrets_file,
)
from .trigger_events import trigger_event_for


class SecretInlineBase(admin.TabularInline):
    model = Secret
    formset = UniqueNamesFormSet
    extra = 1
    fields = ["name", "value", "updated_at"]
    readonly_fields = ["updated_at"]
    verbose_name_plural = "Secrets (write-only: values are never shown again)"


class PackageSecretInline(SecretInlineBase):
    form = PackageSecretForm
    fk_name = "package"


class ProjectSecretInline(SecretInlineBase):
    form = ProjectSecretForm
    fk_name = "project"


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    inlines = [ProjectSecretInline]
    list_display = ["name", "description", "package_count"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(package_total=Count("packages"))

    @admin.display(description="Packages", ordering="package_total")
    def package_count(self, project: Project) -> int:
        return project.package_total


@admin.register(PlatformSecret)
class PlatformSecretAdmin(admin.ModelAdmin):
    form = PlatformSecretForm
    list_display = ["name", "updated_at"]
    search_fields = ["name"]
    fields = ["name", "value"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(scope=SecretScope.PLATFORM)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name"]
    search_fields = ["name"]


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "subscriber_list", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["subscriber_list"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("subscribers")

    @admin.display(description="Subscribed packages")
    def subscriber_list(self, event_type: EventType) -> str:
        return ", ".join(package.name for package in event_type.subscribers.all()) or "—"


class ScriptInline(admin.TabularInline):
    model = Script
    form = ScriptInlineForm
    formset = ScriptInlineFormSet
    extra = 1
    fields = ["position", "file_name", "kind_display", "size_display", "download", "upload"]
    readonly_fields = ["file_name", "kind_display", "size_display", "download"]
    ordering = ["position", "file_name"]

    @admin.display(description="Kind")
    def kind_display(self, script: Script) -> str:
        return script.kind.label if script.pk else ""

    @admin.display(description="Size")
    def size_display(self, script: Script) -> str:
        return f"{script.size} bytes" if script.pk else ""

    @admin.display(description="")
    def download(self, script: Script) -> str:
        if not script.pk:
            return ""
        return format_html('<a href="{}">Download</a>', reverse("admin:packages_script_download", args=[script.pk]))


class EnvironmentVariableInline(admin.TabularInline):
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
        help_text="A JSON object of names to values; stored encrypted as package secrets, the file is not kept.",
    )

    class Meta:
        model = Package
        fields = [
            "name", "package_name", "description", "project", "tags", "schedule", "timezone", "trigger_event_types",
            "allow_manual_triggering", "active", "priority", "step_timeout_seconds", "network_access",
            "continue_on_failure", "retries_after_worker_loss", "entrypoint",
        ]  # fmt: skip

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
class PackageAdmin(admin.ModelAdmin):
    form = PackageForm
    inlines = [ScriptInline, EnvironmentVariableInline, PackageSecretInline]
    list_display = ["name", "project", "tag_list", "script_count", "schedule", "active", "priority", "run"]
    list_filter = ["project", "tags", "active", ScheduledFilter, "trigger_event_types"]
    list_select_related = ["project"]
    search_fields = ["name", "package_name", "description"]
    prepopulated_fields = {"package_name": ["name"]}
    filter_horizontal = ["tags", "trigger_event_types"]
    readonly_fields = ["schedule_preview", "trigger_event", "fx_state", "git_source"]
    fieldsets = [
        (None, {"fields": ["name", "package_name", "description", "project", "tags", "new_tags", "secrets_file"]}),
        (
            "Triggers",
            {
                "fields": [
                    "schedule",
                    "timezone",
                    "schedule_preview",
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
                    "continue_on_failure",
                    "retries_after_worker_loss",
                    "entrypoint",
                ]  # fmt: skip
            },
        ),
        ("Show Trigger Event", {"classes": ["collapse"], "fields": ["trigger_event"]}),
        ("State", {"classes": ["collapse"], "fields": ["fx_state"]}),
        ("Source", {"classes": ["collapse"], "fields": ["git_source"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(script_total=Count("scripts")).prefetch_related("tags")

    @admin.display(description="Scripts", ordering="script_total")
    def script_count(self, package: Package) -> int:
        return package.script_total

    @admin.display(description="Tags")
    def tag_list(self, package: Package) -> str:
        return ", ".join(tag.name for tag in package.tags.all())

    @admin.display(description="In words, next runs")
    def schedule_preview(self, package: Package) -> str:
        return schedule_preview_html(package.schedule, package.timezone, timezone.now())

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
        if not (package.active and package.allow_manual_triggering):
            return ""
        url = reverse("admin:packages_package_run", args=[package.pk])
        return format_html('<a class="button" href="{}">Run</a>', url)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        package = form.instance
        package.tags.add(*[Tag.objects.get_or_create(name=name)[0] for name in form.cleaned_data["new_tags"]])
        store_package_secrets(package, form.cleaned_data["secrets_file"])
        sync_package_schedule(package)

    def delete_model(self, request, obj):
        package_id = obj.pk
        super().delete_model(request, obj)
        remove_package_schedule(package_id)

    def delete_queryset(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        for package_id in ids:
            remove_package_schedule(package_id)

    def get_urls(self):
        return [
            path("<int:package_id>/run/", self.admin_site.admin_view(self.run_view), name="packages_package_run"),
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
        package = get_object_or_404(Package, pk=package_id)
        if not request.user.has_perm("packages.run_package"):
            messages.error(request, "You are not allowed to run packages.")
            return HttpResponseRedirect(reverse("admin:packages_package_change", args=[package.pk]))
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
        messages.success(request, f"Execution {execution.short_id} of {package.name} started.")
        url = reverse("admin:executions_execution_changelist")
        return HttpResponseRedirect(f"{url}?package__id__exact={package.pk}")

    def download_view(self, request, script_id: int):
        if not self.has_view_permission(request):
            raise PermissionDenied
        script = get_object_or_404(Script, pk=script_id)
        response = HttpResponse(bytes(script.content), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{script.file_name}"'
        return response


from . import git_admin  # noqa: F401, E402  (registers GitRepositoryAdmin)
from .sql_connection_admin import SqlConnectionAdmin  # noqa: F401, E402  (registers it)
