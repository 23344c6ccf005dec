import json

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import BooleanField, Case, Count, Exists, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from executor_project.badges import status_badge
from executor_project.widgets import SuggestingInput
from packages import access
from packages.access import Action
from packages.access_admin import MissingIsNotFound, ProjectScopedAdmin
from packages.audit import AuditAction, record
from packages.cron import CronError
from packages.cron import parse as parse_cron

from .big_lists import EstimatedCountPaginator, execution_search
from .cancel import NothingToCancel, request_cancel
from .chains import ChainNode, chain_of
from .list_times import duration_words, relative_time
from .models import ALL_API_SCOPES, ApiKey, ApiScope, Execution, ExecutionStep, SavedExecution, StepStatus, TriggerEvent
from .progress_page import POLL_MS, progress_data, progress_html
from .queueing import admin_message
from .run_pages import run_form_page
from .saved_runs import rerun
from .services import TriggerRefused

# django-celery-beat's tables are superusers' only (packages/admin.py:_platform_only) and written by Executor itself
# (packages/schedules.py, saved_runs.py, later_runs.py; repaired by `manage.py sync_schedules`): a schedule is
# edited on its package or saved run. Their section's name says they are the machinery, not "Periodic Tasks".
apps.get_app_config("django_celery_beat").verbose_name = "Internal: schedules"

# A runner may save, name and describe a run; putting it on a schedule is a maintainer's (it runs code unattended).
SCHEDULE_FIELDS = frozenset({"schedule", "schedule_timezone"})
RUN_FIELDS = frozenset({"name", "description", "saved"})
ELSEWHERE = "an execution in another project"  # what stands for an execution the viewer may not see


def _step_count(processed_only: bool = False):
    """Steps per execution as a subquery: evaluated for the rows of one page, not grouped over the whole table
    (a JOIN + GROUP BY would aggregate every execution before the page's LIMIT)."""
    steps = ExecutionStep.objects.filter(execution=OuterRef("pk"))
    if processed_only:
        steps = steps.exclude(status__in=[StepStatus.PENDING, StepStatus.RUNNING])
    counted = steps.order_by().values("execution").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def _allowed_for(user, action: Action, path: str):
    """An annotation: may `user` do `action` on the row (its project reached through `path`)?"""
    ids = access.project_ids(user, action)
    if ids is None:
        return Value(True, output_field=BooleanField())
    # An empty `ids` makes the When match nothing (Django drops it), so the row gets the default.
    return Case(When(**{f"{path}__in": ids}, then=Value(True)), default=Value(False), output_field=BooleanField())


def _viewer(obj):
    """The user a page shows `obj` to (set by get_object); nobody, so nothing extra shown, if it was not set."""
    return getattr(obj, "_viewer", None) or AnonymousUser()


class ScopedRelatedFilter(admin.RelatedFieldListFilter):
    """A related-object filter whose choices are only the user's projects' objects, not every row of the table."""

    path = "project"  # from the filter's related model to its project
    action = Action.VIEW

    def __init__(self, field, request, *args, **kwargs):
        self.user = request.user  # before super().__init__, which asks for the choices
        super().__init__(field, request, *args, **kwargs)

    @property
    def include_empty_choice(self) -> bool:
        # "(None)" would offer the platform's objects, which only superusers see.
        return access.is_superuser(self.user) and super().include_empty_choice

    def field_choices(self, field, request, model_admin):
        related = access.scoped(field.related_model._default_manager.all(), self.user, self.action, self.path)
        ordering = self.field_admin_ordering(field, request, model_admin)
        return [(obj.pk, str(obj)) for obj in (related.order_by(*ordering) if ordering else related)]


class ProjectFilter(ScopedRelatedFilter):
    path = "pk"


class PackageFilter(ScopedRelatedFilter):
    path = "project"


class ManagedProjectFilter(ScopedRelatedFilter):
    path = "pk"
    action = Action.MANAGE


class ExecutionForm(forms.ModelForm):
    class Meta:
        model = Execution
        fields = ["name", "description", "saved", "schedule", "schedule_timezone"]
        widgets = {"schedule_timezone": SuggestingInput(attrs={"autocomplete": "off", "size": 30})}

    def clean(self):
        cleaned = super().clean()
        if "schedule" not in self.fields:  # read-only for this user (ExecutionAdmin.get_readonly_fields)
            if self.instance.schedule and "saved" in self.fields and not cleaned.get("saved"):
                # Unsaving a scheduled run would stop its schedule: that is changing the schedule.
                self.add_error("saved", "This saved run has a schedule, which only a maintainer or owner of its "
                                        "project may change: ask one to empty it first.")  # fmt: skip
        # "Only a saved run runs on a schedule" is Execution.clean()'s, shown on the schedule field.
        return cleaned


@admin.register(Execution)
class ExecutionAdmin(ProjectScopedAdmin):
    """Executions of the user's projects. Seeing one needs VIEW; its form (name, description, saved), Re-run and
    Cancel need RUN; its schedule and deleting it need EDIT (packages/access.py)."""

    project_path = "package__project"
    edit_action = Action.RUN
    form = ExecutionForm
    change_form_template = "admin/executions/execution/change_form.html"  # the saved runs' admin shares it
    # The FX columns, compact enough for 1280 px beside the filters: short ids, relative times (the full time on
    # hover), the trigger event under its trigger type, a duration in words.
    list_display = [
        "short_id",
        "short_cid",
        "package",
        "trigger",
        "status_display",
        "scripts_processed",
        "created",
        "started",
        "finished",
        "execution_time",
        "name",
        "saved",
    ]
    change_list_template = "admin/executions/execution/change_list.html"
    list_filter = ["status", "trigger_type", "saved", ("package__project", ProjectFilter), ("package", PackageFilter),
                   "created_at"]  # fmt: skip
    list_select_related = ["package", "trigger_event"]
    # Searched by execution_search (indexed lookups); date_hierarchy is left out: it runs SELECT DISTINCT over
    # every row's date (a quarter of a second at a million executions). bench/admin_lists.py measures these pages.
    search_fields = ["name"]
    search_help_text = "An execution id (full or the 8 characters shown), a correlation id, a package or a name."
    show_full_result_count = False  # no COUNT(*) over a large table on every page view
    show_facets = admin.ShowFacets.NEVER  # per-filter counts: one COUNT per option over millions of rows
    paginator = EstimatedCountPaginator
    # Status, times and steps come first, from progress.html (kept current in place); then the facts that do not
    # change, then the form, then the chain, which can be long.
    fieldsets = [
        (
            "Run",
            {
                "fields": [
                    "id",
                    "package",
                    "trigger_type",
                    "trigger_event_link",
                    "params",
                    "correlation_id",
                    "parent_link",
                    "rerun_link",
                    "source_commit",
                    "created_by",
                    "created_at",
                ]
            },
        ),
        ("Keep this run", {"fields": ["name", "description", "saved", "schedule", "schedule_timezone"]}),
        ("Chain", {"fields": ["chain"], "description": "Executions sharing this correlation id, by parent."}),
    ]
    readonly_fields = [*fieldsets[0][1]["fields"], "chain"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(step_total=_step_count(), step_processed=_step_count(True))

    def get_object(self, request, object_id, from_field=None):
        execution = super().get_object(request, object_id, from_field)
        if execution is not None:
            execution._viewer = request.user  # the links and the chain show only what this user may see
        return execution

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is None or not access.can(request.user, Action.EDIT, obj):
            fields += sorted(SCHEDULE_FIELDS)  # left out of the form: a posted schedule is ignored, not saved
        return fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._may(request, Action.EDIT, obj)  # the ledger is not a runner's to erase

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["may_run"] = obj is not None and access.can(request.user, Action.RUN, obj)
        if obj is not None:
            context["progress_html"] = progress_html(obj)
            context["progress_url"] = reverse("admin:executions_execution_progress", args=[obj.pk])
            context["poll_ms"] = POLL_MS
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request, obj, form, change):
        changed = set(form.changed_data)
        if changed & SCHEDULE_FIELDS and not access.can(request.user, Action.EDIT, obj):
            raise PermissionDenied  # never reached through the form (the fields are read-only); a second lock
        super().save_model(request, obj, form, change)  # checks RUN; the beat task follows (saved_runs.py)
        # The admin's change view runs in one transaction: the entries are kept only if the save is.
        if changed & SCHEDULE_FIELDS:
            record(AuditAction.EDIT, obj, user=request.user, details={"fields": sorted(changed & SCHEDULE_FIELDS)})
        if changed & RUN_FIELDS:
            record(AuditAction.SAVE_RUN, obj, user=request.user, details={"fields": sorted(changed & RUN_FIELDS)})

    def delete_model(self, request, obj):
        record(AuditAction.DELETE, obj, user=request.user)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for execution in queryset.select_related("package"):
                record(AuditAction.DELETE, execution, user=request.user)
            super().delete_queryset(request, queryset)

    def get_search_results(self, request, queryset, search_term):
        # `queryset` is already the user's projects' executions: the search only narrows it.
        if not search_term.strip():
            return queryset, False
        return queryset.filter(execution_search(search_term)), False

    def has_add_permission(self, request):
        return False  # executions start from a package's Run button, a schedule or an event

    @admin.display(description="Execution", ordering="id")
    def short_id(self, execution: Execution) -> str:
        return format_html('<code title="{}">{}</code>', execution.id, execution.short_id)

    @admin.display(description="Status", ordering="status")
    def status_display(self, execution: Execution) -> str:
        return status_badge(execution.status, execution.get_status_display())

    @admin.display(description="CID", ordering="correlation_id")  # FX's name for the correlation id
    def short_cid(self, execution: Execution) -> str:
        return format_html('<code title="{}">{}</code>', execution.correlation_id, execution.correlation_id[:8])

    @admin.display(description="Trigger", ordering="trigger_type")
    def trigger(self, execution: Execution) -> str:
        """The trigger type, and below it the event that started the run (FX's two columns in one)."""
        if not execution.trigger_event_id:
            return execution.get_trigger_type_display()
        return format_html('{}<br><span class="executor-reason">{}</span>', execution.get_trigger_type_display(),
                           execution.trigger_event.type)  # fmt: skip

    @admin.display(description="Created", ordering="created_at")
    def created(self, execution: Execution) -> str:
        return relative_time(execution.created_at)

    @admin.display(description="Started", ordering="started_at")
    def started(self, execution: Execution) -> str:
        return relative_time(execution.started_at)

    @admin.display(description="Finished", ordering="finished_at")
    def finished(self, execution: Execution) -> str:
        return relative_time(execution.finished_at)

    @admin.display(description="Time")
    def execution_time(self, execution: Execution) -> str:
        if execution.duration_ms is None:
            return "—"
        return format_html(
            '<span title="{} ms">{}</span>', execution.duration_ms, duration_words(execution.duration_ms)
        )

    @admin.display(description="Re-run of")
    def rerun_link(self, execution: Execution) -> str:
        return _execution_link(execution.rerun_of, _viewer(execution)) if execution.rerun_of_id else "—"

    @admin.display(description="Scripts")
    def scripts_processed(self, execution: Execution) -> str:
        return f"{execution.step_processed}/{execution.step_total}"

    @admin.display(description="Trigger event")
    def trigger_event_link(self, execution: Execution) -> str:
        # Whoever sees an execution sees the event that started it (TriggerEventAdmin's rule).
        return _change_link(execution.trigger_event) if execution.trigger_event_id else "—"

    @admin.display(description="Started by execution")
    def parent_link(self, execution: Execution) -> str:
        if not execution.parent_execution_id:
            return "—"
        return _execution_link(execution.parent_execution, _viewer(execution))

    @admin.display(description="Chain")
    def chain(self, execution: Execution) -> str:
        viewer = _viewer(execution)
        chain = chain_of(execution, viewer)
        if len(chain.nodes) == 1 and not chain.truncated:
            if access.is_superuser(viewer):
                return "This execution is the whole chain: no event it sent started another."
            return "No other execution of this chain is in your projects."
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
                "<uuid:execution_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name=f"{prefix}_progress",
            ),
            path(
                "<uuid:execution_id>/steps/<int:step_id>/results/",
                self.admin_site.admin_view(self.step_results_view),
                name=f"{prefix}_step_results",
            ),
            *super().get_urls(),
        ]

    def _execution_for(self, request, execution_id, action: Action) -> Execution:
        """The execution, if the user may see it (else 404, the answer for one that does not exist) and may do
        `action` on it (else 403)."""
        execution = Execution.objects.select_related("package").filter(pk=execution_id).first()
        access.require(request.user, action, execution, f"execution {execution_id}")
        return execution

    def rerun_view(self, request, execution_id):
        """POST: a new execution with the same parameters and files; shows it."""
        source = self._execution_for(request, execution_id, Action.RUN)
        if request.method != "POST":
            raise PermissionDenied
        try:
            execution = rerun(source, user=request.user)
        except TriggerRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[source.pk]))
        messages.add_message(
            request, *admin_message(execution, f"Execution {execution.short_id}", f": a re-run of {source.short_id}")
        )
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))

    def rerun_edited_view(self, request, execution_id):
        source = self._execution_for(request, execution_id, Action.RUN)
        return run_form_page(request, self.admin_site, source.package, source=source)

    def cancel_view(self, request, execution_id):
        execution = self._execution_for(request, execution_id, Action.RUN)
        if request.method != "POST":
            raise PermissionDenied
        try:
            messages.success(request, request_cancel(execution, request.user))
        except NothingToCancel as exc:
            messages.warning(request, str(exc))
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))

    def progress_view(self, request, execution_id):
        """GET: what the execution's page shows live (progress_page.py), as JSON, for its polling script."""
        execution = self._execution_for(request, execution_id, Action.VIEW)
        execution._viewer = request.user  # the chain shows only what this user may see
        return JsonResponse(progress_data(execution, self.chain(execution)))

    def step_results_view(self, request, execution_id, step_id: int):
        steps = access.scoped(ExecutionStep.objects.select_related("execution__package"), request.user,
                              Action.VIEW, "execution__package__project")  # fmt: skip
        step = steps.filter(pk=step_id, execution_id=execution_id).first()
        if step is None:
            raise Http404(f"No step {step_id} of execution {execution_id}.")
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


def _execution_link(execution: Execution, viewer, label: str | None = None) -> str:
    """A link to `execution`, or words without its name, id or status if `viewer` may not see it."""
    if not access.can(viewer, Action.VIEW, execution):
        return ELSEWHERE
    return _link(execution, label) if label else _change_link(execution)


def _tree(nodes: list[ChainNode], current: Execution) -> str:
    return format_html_join("", "<li>{}<ul>{}</ul></li>", ((_node(n, current), _tree(n.children, current))
                                                            for n in nodes))  # fmt: skip


def _node(node: ChainNode, current: Execution) -> str:
    if not node.visible:
        return format_html('<span class="quiet">{}</span>', ELSEWHERE)
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
    change_list_template = None  # the admin's own: none of the executions list's width or refresh is needed here
    list_filter = [("package__project", ProjectFilter), ("package", PackageFilter)]
    list_select_related = ["package"]

    def get_queryset(self, request):
        latest = Execution.objects.filter(rerun_of=OuterRef("pk")).order_by("-created_at")
        last = {f"last_run_{name}": Subquery(latest.values(field)[:1])
                for name, field in (("id", "pk"), ("status", "status"), ("at", "created_at"))}  # fmt: skip
        may_run = _allowed_for(request.user, Action.RUN, self.project_path)  # for the Run… button
        return super().get_queryset(request).annotate(**last, may_run=may_run)

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
        if not getattr(execution, "may_run", False):
            return ""
        url = reverse("admin:executions_execution_rerun_edited", args=[execution.pk])
        return format_html('<a class="button" href="{}">Run…</a>', url)


@admin.register(TriggerEvent)
class TriggerEventAdmin(MissingIsNotFound, admin.ModelAdmin):
    """Every event received or emitted, read-only: what arrived, from whom, and what it started.

    A member sees an event of one of their projects (sent with its key or by its execution), or one that started
    an execution in one of their projects, and of what it started only those executions. An event of a platform
    key that started nothing of theirs is the platform's: superusers only."""

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
        queryset = super().get_queryset(request)
        ids = access.project_ids(request.user, Action.VIEW)
        # Who sent it, shown only if the viewer may see the sender (columns see the row, not the request).
        seen = {"parent_visible": _allowed_for(request.user, Action.VIEW, "parent_execution__package__project"),
                "key_visible": _allowed_for(request.user, Action.VIEW, "api_key__project")}  # fmt: skip
        # The aggregate drops Meta.ordering: order explicitly (newest first), or lists page an unordered set.
        if ids is None:
            return queryset.annotate(execution_count=Count("executions"), **seen).order_by("-received_at")
        started_here = Execution.objects.filter(trigger_event=OuterRef("pk"), package__project__in=ids)
        return (
            queryset.filter(Q(project__in=ids) | Exists(started_here))
            .annotate(execution_count=Count("executions", filter=Q(executions__package__project__in=ids)), **seen)
            .order_by("-received_at")
        )

    def get_object(self, request, object_id, from_field=None):
        event = super().get_object(request, object_id, from_field)
        if event is not None:
            event._viewer = request.user  # "started" lists only the executions this user may see
        return event

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, Action.VIEW)
        return self.get_queryset(request).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return False  # events arrive through the API (POST /fx/events) or from executions

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return access.is_superuser(request.user)  # an event may concern several projects

    @admin.display(description="Id", ordering="event_id")
    def short_event_id(self, event: TriggerEvent) -> str:
        return event.event_id[:12]

    @admin.display(description="Status", ordering="status")
    def status_display(self, event: TriggerEvent) -> str:
        return status_badge(event.status, event.get_status_display())

    @admin.display(description="Sent by")
    def sender(self, event: TriggerEvent) -> str:
        if event.parent_execution_id:
            if not getattr(event, "parent_visible", False):
                return ELSEWHERE
            return _link(event.parent_execution, f"execution {event.parent_execution.short_id}")
        if not event.api_key_id:
            return "—"
        if getattr(event, "key_visible", False):
            return f"API key {event.api_key}"
        return "a platform API key" if event.api_key.project_id is None else "an API key of another project"

    @admin.display(description="Executions started", ordering="execution_count")
    def execution_count(self, event: TriggerEvent) -> int:
        return event.execution_count

    @admin.display(description="Executions started")
    def started(self, event: TriggerEvent) -> str:
        executions = access.scoped(event.executions.select_related("package"), _viewer(event), Action.VIEW,
                                   "package__project").order_by("created_at")  # fmt: skip
        return format_html_join(", ", "{}", ((_link(e, e.package.package_name),) for e in executions)) or "—"


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiScope.choices,
        initial=ALL_API_SCOPES,
        required=False,  # none ticked: a key that may call nothing, harmless (never read as "all")
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may call. A project key reaches only its project's packages, executions and "
        "repositories.",
    )

    class Meta:
        model = ApiKey
        fields = ["name", "project", "scopes", "rate_limit"]


@admin.register(ApiKey)
class ApiKeyAdmin(MissingIsNotFound, admin.ModelAdmin):
    """Keys are issued here (shown once, on the page right after Save) and revoked, never shown again.

    A project's keys are its owners' (MANAGE) to issue, see and revoke; platform keys (no project), which reach
    every project, are superusers' only. So is a key's own rate limit: the platform's limit keeps one team's sender
    from crowding out the others, so a team does not lift it for itself."""

    form = ApiKeyForm
    list_display = ["name", "project", "hint", "scope_list", "state", "created_by", "created_at", "last_used_at"]
    list_filter = [("project", ManagedProjectFilter), ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "hint"]
    list_select_related = ["created_by", "project"]
    actions = ["revoke"]

    def get_queryset(self, request):
        return access.scoped(super().get_queryset(request), request.user, Action.MANAGE)

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.MANAGE)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._may_manage(request, obj)

    def has_add_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.MANAGE)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._may_manage(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)  # owners revoke: the key's row stays, with its last use

    def _may_manage(self, request, obj) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, Action.MANAGE)
        return access.can(request.user, Action.MANAGE, obj)  # no project: the platform's, superusers only

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "project", "scopes", "rate_limit"]
        return ["name", "project", "scope_list", "rate_limit", "hint", "state", "created_by", "created_at",
                "last_used_at"]  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        limit = [] if access.is_superuser(request.user) else ["rate_limit"]
        # A key's reach is fixed when it is issued: to change it, issue another and revoke this one.
        return limit if obj is None else [*limit, "project", "scope_list", "hint", "state", "created_by", "created_at",
                                          "last_used_at"]  # fmt: skip

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project":
            kwargs["queryset"] = access.projects(request.user, Action.MANAGE)
            if not access.is_superuser(request.user):
                kwargs["required"] = True  # only superusers issue platform keys
            else:
                kwargs["help_text"] = "Empty: a platform key, which reaches every project."
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="scopes")
    def scope_list(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.scopes) or "none"

    @admin.display(description="state", ordering="revoked_at")
    def state(self, api_key: ApiKey) -> str:
        return "active" if api_key.is_active else f"revoked {api_key.revoked_at:%Y-%m-%d %H:%M}"

    def save_model(self, request, obj, form, change):
        # The project was just chosen: the rule applies to where the key lands (none: a platform key).
        if not access.can(request.user, Action.MANAGE, obj):
            raise PermissionDenied
        if change:
            super().save_model(request, obj, form, change)
            return
        obj.created_by = request.user
        request._issued_api_key = obj.set_new_key()
        super().save_model(request, obj, form, change)
        # In the add view's transaction. The key itself is never written anywhere but the response.
        record(AuditAction.ISSUE_KEY, obj, user=request.user,
               details={"scopes": list(obj.scopes), "platform": obj.project_id is None})  # fmt: skip

    def response_add(self, request, obj, post_url_continue=None):
        """The key itself, once: rendered into this response only (not a message kept in a cookie or session)."""
        context = {**self.admin_site.each_context(request), "api_key": obj, "key": request._issued_api_key,
                   "opts": self.opts, "title": "API key issued"}  # fmt: skip
        return TemplateResponse(request, "admin/executions/apikey/issued.html", context)

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request, queryset):
        """Revokes the selected keys the user may manage; the others are skipped and reported."""
        selected = len(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
        considered = list(queryset.select_related("project"))  # already narrowed to keys the user may see
        revoked = skipped = 0
        for api_key in considered:
            if not access.can(request.user, Action.MANAGE, api_key):
                skipped += 1
            elif api_key.is_active:
                with transaction.atomic():  # the revocation and its audit entry: both or neither
                    api_key.revoke()
                    record(AuditAction.REVOKE_KEY, api_key, user=request.user)
                revoked += 1
        skipped += max(selected - len(considered), 0)  # chosen, but not the user's to see (another project's)
        if revoked:
            self.message_user(request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''}: requests with "
                              "them are refused from now on.", messages.SUCCESS)  # fmt: skip
        if skipped:
            self.message_user(request, f"Skipped {skipped} API key{'s' if skipped != 1 else ''} you may not revoke.",
                              messages.WARNING)  # fmt: skip
        if not revoked and not skipped:
            self.message_user(request, "Those API keys were already revoked.", messages.INFO)


from . import notification_admin  # noqa: F401, E402  (registers NotificationRuleAdmin, DeliveryAdmin)
