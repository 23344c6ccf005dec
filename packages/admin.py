from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from executions.models import TriggerType
from executions.services import TriggerRefused, trigger_execution

from .forms import ScriptInlineForm, ScriptInlineFormSet
from .models import Package, Project, Script


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "description"]
    search_fields = ["name"]


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


@admin.register(Package)
class PackageAdmin(admin.ModelAdmin):
    inlines = [ScriptInline]
    list_display = ["name", "package_name", "project", "script_count", "active", "allow_manual_triggering", "run"]
    list_filter = ["active", "project"]
    list_select_related = ["project"]
    search_fields = ["name", "package_name", "description"]
    prepopulated_fields = {"package_name": ["name"]}
    fields = ["name", "package_name", "description", "project", "active", "allow_manual_triggering"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(script_total=Count("scripts"))

    @admin.display(description="Scripts", ordering="script_total")
    def script_count(self, package: Package) -> int:
        return package.script_total

    @admin.display(description="")
    def run(self, package: Package) -> str:
        if not (package.active and package.allow_manual_triggering):
            return ""
        return format_html(
            '<a class="button" href="{}">Run</a>', reverse("admin:packages_package_run", args=[package.pk])
        )

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
        """GET: confirm; POST: start a manual execution and show the package's executions."""
        package = get_object_or_404(Package, pk=package_id)
        if not request.user.has_perm("packages.run_package"):
            messages.error(request, "You are not allowed to run packages.")
            return HttpResponseRedirect(reverse("admin:packages_package_change", args=[package.pk]))
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
