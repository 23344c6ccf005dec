"""The audit log in the admin, and the mixin that makes a model admin write it.

The log is read-only for everyone (superusers too): it is the record of what happened, not data to correct.
Maintainers and owners read their projects' entries; entries of no project (platform secrets, platform keys,
scheduler tables) are the superusers'.
"""

import json

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import BaseFormSet
from django.http import Http404
from django.utils.html import format_html

from . import access
from .access import Action
from .admin_filters import EditableProjectListFilter
from .audit import AuditAction, record
from .models import AuditEntry, ProjectMembership


class AuditedAdminMixin:
    """For a ModelAdmin (put it first among the bases): saving, deleting and saving inlines write CREATE / EDIT /
    DELETE entries (SET_MEMBER / REMOVE_MEMBER for memberships) in the admin's own transaction (the change and
    delete views are atomic). `details` names the changed fields, never their values: a secret's value, a
    token or a webhook secret must not reach the log."""

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            record(AuditAction.CREATE, obj, user=request.user, details=_fields(form.changed_data))
        elif form.changed_data:  # a Save that changed only inlines is recorded by save_formset
            record(AuditAction.EDIT, obj, user=request.user, details=_fields(form.changed_data))

    def delete_model(self, request, obj) -> None:
        record(AuditAction.DELETE, obj, user=request.user)  # first: after the delete the object has no pk
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset: QuerySet) -> None:
        for obj in queryset:
            record(AuditAction.DELETE, obj, user=request.user)
        super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset: BaseFormSet, change) -> None:
        # Recorded first: once deleted, an object has no pk left to name it by.
        for deleted_form in formset.deleted_forms:
            if deleted_form.instance.pk is not None:
                _record_inline(request, deleted_form.instance, deleted=True)
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            _record_inline(request, obj, action=AuditAction.CREATE, changed=_changed_fields(formset, obj))
        for obj, changed in formset.changed_objects:
            _record_inline(request, obj, action=AuditAction.EDIT, changed=changed)


def _fields(changed: list[str]) -> dict:
    return {"fields": sorted(changed)} if changed else {}


def _changed_fields(formset: BaseFormSet, obj: Model) -> list[str]:
    form = next((form for form in formset.forms if form.instance is obj), None)
    return form.changed_data if form is not None else []


def _record_inline(request, obj: Model, *, action: str = "", changed: list[str] = (), deleted: bool = False) -> None:
    if isinstance(obj, ProjectMembership):  # a member's role is what the log is about, not "a row changed"
        details = {"user": obj.user.get_username(), "role": obj.role}
        action = AuditAction.REMOVE_MEMBER if deleted else AuditAction.SET_MEMBER
        record(action, obj.project, user=request.user, details=details)
        return
    record(AuditAction.DELETE if deleted else action, obj, user=request.user, details=_fields(list(changed)))


class ActionListFilter(admin.SimpleListFilter):
    """The actions the log knows (a fixed list: a filter over the stored values would query every project's)."""

    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return AuditAction.choices

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "actor", "action_display", "object_type", "object_repr", "project", "detail_summary"]
    list_filter = [("project", EditableProjectListFilter), ActionListFilter, ("at", admin.DateFieldListFilter)]
    list_select_related = ["project"]
    search_fields = ["actor", "object_repr", "object_type", "object_id"]
    fields = ["at", "actor", "user", "action_display", "project", "object_type", "object_id", "object_repr",
              "details_display"]  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):
        return access.scoped(super().get_queryset(request), request.user, Action.EDIT)

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.EDIT)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, Action.EDIT)
        return access.can(request.user, Action.EDIT, obj.project_id)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} {object_id}.")  # the same answer whether it exists elsewhere or not

    @admin.display(description="Action", ordering="action")
    def action_display(self, entry: AuditEntry) -> str:
        return AuditAction(entry.action).label if entry.action in AuditAction.values else entry.action

    @admin.display(description="Details")
    def detail_summary(self, entry: AuditEntry) -> str:
        return "; ".join(f"{key}: {_words(value)}" for key, value in entry.details.items())

    @admin.display(description="Details")
    def details_display(self, entry: AuditEntry) -> str:
        return format_html('<pre class="executor-output">{}</pre>', json.dumps(entry.details, indent=2))


def _words(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
