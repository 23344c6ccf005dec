import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from packages.cron import CronError
from packages.cron import parse as parse_cron

from .big_lists import EstimatedCountPaginator, execution_search
from .chains import ChainNode, chain_of
from .models import ApiKey, Execution, ExecutionStep, SavedExecution, StepStatus, TriggerEvent
from .run_pages import run_form_page
from .saved_runs import rerun, sync_saved_run_schedule
from .services import NothingToCancel, TriggerRefused, request_cancel


def _step_count(processed_only: bool = False):
    """Steps per execution as a subquery: evaluated for the rows of one page, not grouped over the whole table
    (a JOIN + GROUP BY would aggregate every execution before the page's LIMIT)."""
    steps = ExecutionStep.objects.filter(execution=OuterRef("pk"))
    if processed_only:
        steps = steps.exclude(status__in=[StepStatus.PENDING, StepStatus.RUNNING])
    counted = steps.order_by().values("execution").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


class ExecutionForm(forms.ModelForm):
    class Meta:
        model = Execution
        fields = ["name", "description", "saved", "schedule", "schedule_timezone"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("schedule") and not cleaned.get("saved"):
            self.add_error("schedule", "Only a saved run runs on a schedule: tick Saved, or empty the schedule.")
        return cleaned


def status_badge(status: str, label: str) -> str:
    return format_html('<span class="executor-badge executor-{}">{}</span>', status, label)


class ExecutionStepInline(admin.TabularInline):
    model = ExecutionStep
    extra = 0
    can_delete = False
    fields = ["position", "file_name", "status_display", "status_reason", "exit_code", "duration_ms", "results"]
    readonly_fields = fields
    ordering = ["position"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Status")
    def status_display(self, step: ExecutionStep) -> str:
        return status_badge(step.status, step.get_status_display())

    @admin.display(description="Results")
    def results(self, step: ExecutionStep) -> str:
        url = reverse("admin:executions_execution_step_results", args=[step.execution_id, step.pk])
        return format_html('<a href="{}">Show Results</a>', url)


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    form = ExecutionForm
    change_form_template = "admin/executions/execution/change_form.html"  # the saved runs' admin shares it
    inlines = [ExecutionStepInline]
    list_display = [
        "short_id",
        "short_cid",
        "package",
        "trigger_type",
        "trigger_event_type",
        "status_display",
        "scripts_processed",
        "created_at",
        "started_at",
        "finished_at",
        "execution_time_ms",
        "name",
        "saved",
    ]
    list_filter = ["status", "trigger_type", "saved", "package__project", "package", "created_at"]
    list_select_related = ["package", "trigger_event"]
    # Searched by execution_search (indexed lookups); date_hierarchy is left out: it runs SELECT DISTINCT over
    # every row's date (a quarter of a second at a million executions). bench/admin_lists.py measures these pages.
    search_fields = ["name"]
    search_help_text = "An execution id (full or the 8 characters shown), a correlation id, a package or a name."
    show_full_result_count = False  # no COUNT(*) over a large table on every page view
    show_facets = admin.ShowFacets.NEVER  # per-filter counts: one COUNT per option over millions of rows
    paginator = EstimatedCountPaginator
    fieldsets = [
        (None, {"fields": ["name", "description", "saved", "schedule", "schedule_timezone"]}),
        (
            "Run",
            {
                "fields": [
                    "id",
                    "package",
                    "status_display",
                    "status_reason",
                    "trigger_type",
                    "trigger_event_link",
                    "params",
                    "correlation_id",
                    "parent_link",
                    "rerun_link",
                    "source_commit",
                    "created_by",
                    "worker_name",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "execution_time_ms",
                ]
            },
        ),
        ("Chain", {"fields": ["chain"], "description": "Executions sharing this correlation id, by parent."}),
    ]
    readonly_fields = [*fieldsets[1][1]["fields"], "chain"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(step_total=_step_count(), step_processed=_step_count(True))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        sync_saved_run_schedule(obj)

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return queryset.filter(execution_search(search_term)), False

    def has_add_permission(self, request):
        return False  # executions start from a package's Run button, a schedule or an event

    @admin.display(description="Execution", ordering="id")
    def short_id(self, execution: Execution) -> str:
        return execution.short_id

    @admin.display(description="Status", ordering="status")
    def status_display(self, execution: Execution) -> str:
        return status_badge(execution.status, execution.get_status_display())

    @admin.display(description="Correlation id", ordering="correlation_id")
    def short_cid(self, execution: Execution) -> str:
        return execution.correlation_id[:8]

    @admin.display(description="Trigger event")
    def trigger_event_type(self, execution: Execution) -> str:
        return execution.trigger_event.type if execution.trigger_event_id else "—"

    @admin.display(description="Re-run of")
    def rerun_link(self, execution: Execution) -> str:
        return _change_link(execution.rerun_of) if execution.rerun_of_id else "—"

    @admin.display(description="Scripts processed")
    def scripts_processed(self, execution: Execution) -> str:
        return f"{execution.step_processed}/{execution.step_total}"

    @admin.display(description="Execution time (ms)")
    def execution_time_ms(self, execution: Execution):
        return execution.duration_ms

    @admin.display(description="Trigger event")
    def trigger_event_link(self, execution: Execution) -> str:
        return _change_link(execution.trigger_event) if execution.trigger_event_id else "—"

    @admin.display(description="Started by execution")
    def parent_link(self, execution: Execution) -> str:
        return _change_link(execution.parent_execution) if execution.parent_execution_id else "—"

    @admin.display(description="Chain")
    def chain(self, execution: Execution) -> str:
        chain = chain_of(execution)
        if len(chain.nodes) == 1 and not chain.truncated:
            return "This execution is the whole chain: no event it sent started another."
        note = format_html("<p>Showing the first {} executions.</p>", len(chain.nodes)) if chain.truncated else ""
        return format_html('{}<ul class="executor-chain">{}</ul>', note, _tree(chain.roots, execution))

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"  # the saved runs' admin gets its own names
        return [
            path(
                "<uuid:execution_id>/rerun/",
                self.admin_site.admin_view(self.rerun_view),
                name=f"{prefix}_rerun",
            ),
            path(
                "<uuid:execution_id>/rerun-edited/",
                self.admin_site.admin_view(self.rerun_edited_view),
                name=f"{prefix}_rerun_edited",
            ),
            path(
                "<uuid:execution_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name=f"{prefix}_cancel",
            ),
            path(
                "<uuid:execution_id>/steps/<int:step_id>/results/",
                self.admin_site.admin_view(self.step_results_view),
                name=f"{prefix}_step_results",
            ),
            *super().get_urls(),
        ]

    def rerun_view(self, request, execution_id):
        """POST: a new execution with the same parameters and files; shows it."""
        source = get_object_or_404(Execution.objects.select_related("package"), pk=execution_id)
        if request.method != "POST" or not request.user.has_perm("packages.run_package"):
            raise PermissionDenied
        try:
            execution = rerun(source, user=request.user)
        except TriggerRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[source.pk]))
        messages.success(request, f"Execution {execution.short_id} started: a re-run of {source.short_id}.")
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))

    def rerun_edited_view(self, request, execution_id):
        source = get_object_or_404(Execution.objects.select_related("package"), pk=execution_id)
        if not request.user.has_perm("packages.run_package"):
            raise PermissionDenied
        return run_form_page(request, self.admin_site, source.package, source=source)

    def cancel_view(self, request, execution_id):
        execution = get_object_or_404(Execution, pk=execution_id)
        if request.method != "POST" or not self.has_change_permission(request, execution):
            raise PermissionDenied
        try:
            messages.success(request, request_cancel(execution, request.user))
        except NothingToCancel as exc:
            messages.warning(request, str(exc))
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))

    def step_results_view(self, request, execution_id, step_id: int):
        step = get_object_or_404(
            ExecutionStep.objects.select_related("execution__package"), pk=step_id, execution_id=execution_id
        )
        if not self.has_view_permission(request, step.execution):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "step": step,
            "execution": step.execution,
            "title": f"Results of {step.file_name}",
        }
        return TemplateResponse(request, "admin/executions/execution/step_results.html", context)


def _change_link(obj) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, obj)


def _tree(nodes: list[ChainNode], current: Execution) -> str:
    return format_html_join("", "<li>{}<ul>{}</ul></li>", ((_node(n, current), _tree(n.children, current))
                                                            for n in nodes))  # fmt: skip


def _node(node: ChainNode, current: Execution) -> str:
    execution = node.execution
    label = f"{execution.package.package_name} · {execution.short_id}"
    link = (
        format_html("<strong>{} (this one)</strong>", label) if execution.pk == current.pk else _link(execution, label)
    )
    origin = execution.trigger_event.type if execution.trigger_event_id else execution.get_trigger_type_display()
    times = f"{execution.created_at:%Y-%m-%d %H:%M:%S}" + (
        f", {execution.duration_ms} ms" if execution.duration_ms else ""
    )
    return format_html("{} {} <span class=\"quiet\">{} · {}</span>", link,
                       status_badge(execution.status, execution.get_status_display()), origin, times)  # fmt: skip


def _link(execution: Execution, label: str) -> str:
    url = reverse("admin:executions_execution_change", args=[execution.pk])
    return format_html('<a href="{}">{}</a>', url, label)


@admin.register(SavedExecution)
class SavedExecutionAdmin(ExecutionAdmin):
    """Saved runs: named, reusable parameter sets; run again (optionally edited) or on their own schedule."""

    list_display = ["saved_name", "package", "parameters", "schedule_display", "last_run", "run_again"]
    list_filter = ["package__project", "package"]
    list_select_related = ["package"]

    def get_queryset(self, request):
        latest = Execution.objects.filter(rerun_of=OuterRef("pk")).order_by("-created_at")
        last = {f"last_run_{name}": Subquery(latest.values(field)[:1])
                for name, field in (("id", "pk"), ("status", "status"), ("at", "created_at"))}  # fmt: skip
        return super().get_queryset(request).annotate(**last)

    @admin.display(description="Name", ordering="name")
    def saved_name(self, execution: Execution) -> str:
        return execution.name or f"(unnamed) {execution.short_id}"

    @admin.display(description="Parameters")
    def parameters(self, execution: Execution) -> str:
        text = json.dumps(execution.params)
        return text if len(text) <= 80 else text[:77] + "..."

    @admin.display(description="Schedule", ordering="schedule")
    def schedule_display(self, execution: Execution) -> str:
        if not execution.schedule:
            return "—"
        try:
            return f"{execution.schedule} ({parse_cron(execution.schedule).describe()}, {execution.schedule_timezone})"
        except CronError:
            return execution.schedule

    @admin.display(description="Last run", ordering="last_run_at")
    def last_run(self, execution: Execution) -> str:
        if not execution.last_run_id:
            return "never run again"
        url = reverse("admin:executions_execution_change", args=[execution.last_run_id])
        label = f"{execution.last_run_at:%Y-%m-%d %H:%M}"
        return format_html('<a href="{}">{}</a> {}', url, label, status_badge(execution.last_run_status,
                           execution.last_run_status.replace("_", " ").capitalize()))  # fmt: skip

    @admin.display(description="")
    def run_again(self, execution: Execution) -> str:
        url = reverse("admin:executions_execution_rerun_edited", args=[execution.pk])
        return format_html('<a class="button" href="{}">Run…</a>', url)


@admin.register(TriggerEvent)
class TriggerEventAdmin(admin.ModelAdmin):
    """Every event received or emitted, read-only: what arrived, from whom, and what it started."""

    list_display = ["received_at", "type", "source", "short_event_id", "status_display", "execution_count", "sender"]
    list_filter = ["status", "received_at"]
    search_fields = ["event_id__exact", "type__exact", "source__exact", "correlation_id__exact"]
    list_select_related = ["api_key", "parent_execution__package"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    fields = ["event_id", "source", "type", "subject", "time", "datacontenttype", "data", "received_at",
              "sender", "correlation_id", "chain_depth", "status_display", "status_reason", "started"]  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(execution_count=Count("executions"))

    def has_add_permission(self, request):
        return False  # events arrive through the API (POST /fx/events) or from executions

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Id", ordering="event_id")
    def short_event_id(self, event: TriggerEvent) -> str:
        return event.event_id[:12]

    @admin.display(description="Status", ordering="status")
    def status_display(self, event: TriggerEvent) -> str:
        return status_badge(event.status, event.get_status_display())

    @admin.display(description="Sent by")
    def sender(self, event: TriggerEvent) -> str:
        if event.parent_execution_id:
            return _link(event.parent_execution, f"execution {event.parent_execution.short_id}")
        return f"API key {event.api_key}" if event.api_key_id else "—"

    @admin.display(description="Executions started", ordering="execution_count")
    def execution_count(self, event: TriggerEvent) -> int:
        return event.execution_count

    @admin.display(description="Executions started")
    def started(self, event: TriggerEvent) -> str:
        executions = event.executions.select_related("package").order_by("created_at")
        return format_html_join(", ", "{}", ((_link(e, e.package.package_name),) for e in executions)) or "—"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued here (shown once, on the page right after Save) and revoked, never shown again."""

    list_display = ["name", "hint", "state", "created_by", "created_at", "last_used_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "hint"]
    list_select_related = ["created_by"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return ["name"] if obj is None else ["name", "hint", "state", "created_by", "created_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["hint", "state", "created_by", "created_at", "last_used_at"]

    @admin.display(description="state", ordering="revoked_at")
    def state(self, api_key: ApiKey) -> str:
        return "active" if api_key.is_active else f"revoked {api_key.revoked_at:%Y-%m-%d %H:%M}"

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            request._issued_api_key = obj.set_new_key()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        """The key itself, once: rendered into this response only (not a message kept in a cookie or session)."""
        context = {**self.admin_site.each_context(request), "api_key": obj, "key": request._issued_api_key,
                   "opts": self.opts, "title": "API key issued"}  # fmt: skip
        return TemplateResponse(request, "admin/executions/apikey/issued.html", context)

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request, queryset):
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key.revoke()
        self.message_user(request, "Revoked: requests with these keys are refused from now on.", messages.SUCCESS)
