"""Admin classes that follow the role table (packages/access.py): every list, page, inline, button and choice of
project shows and allows only what the user's roles in the object's project allow.

A model admin declares how its model reaches its project (`project_path`) and what changing it takes
(`edit_action`); everything else follows. An object of another project is not there: its pages answer 404, as
for an object that does not exist, and never show its data.
"""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404

from . import access
from .access import Action


class MissingIsNotFound:
    """ModelAdmin mixin: a change page of an object the queryset does not hold answers 404 (Django redirects to the
    index with "does not exist"), the same whether it exists in another project or nowhere."""

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404(f"No {opts.verbose_name} {object_id}.")


class ProjectScopedAdmin(MissingIsNotFound, admin.ModelAdmin):
    project_path = "project"  # the lookup from this model to its Project
    edit_action = Action.EDIT  # what adding, changing and deleting need

    def get_queryset(self, request):
        return access.scoped(super().get_queryset(request), request.user, Action.VIEW, self.project_path)

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._may(request, Action.VIEW, obj)

    def has_add_permission(self, request) -> bool:
        return access.can_anywhere(request.user, self.edit_action)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._may(request, self.edit_action, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._may(request, self.edit_action, obj)

    def _may(self, request, action: Action, obj) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, action)
        return access.can(request.user, action, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project":  # a user puts objects only into projects where they may edit them
            kwargs["queryset"] = access.projects(request.user, self.edit_action)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        # The project may have just been chosen (or changed): the rule applies to where the object lands too.
        if not access.can(request.user, self.edit_action, obj):
            raise PermissionDenied
        super().save_model(request, obj, form, change)


class ProjectScopedInline(admin.options.InlineModelAdmin):
    """Mixin for the inlines of a project-scoped object (`obj` is the parent): they follow the parent's project."""

    edit_action = Action.EDIT

    def has_view_permission(self, request, obj=None) -> bool:
        return obj is None or access.can(request.user, Action.VIEW, obj)

    def has_add_permission(self, request, obj=None) -> bool:
        return self._may_edit(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._may_edit(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._may_edit(request, obj)

    def _may_edit(self, request, obj) -> bool:
        if obj is None:
            return access.can_anywhere(request.user, self.edit_action)
        return access.can(request.user, self.edit_action, obj)


class PlatformAdmin(admin.ModelAdmin):
    """Platform-level objects (platform secrets, SQL connections, scheduler tables): superusers only."""

    def has_module_permission(self, request) -> bool:
        return access.is_superuser(request.user)

    def has_view_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)

    def has_add_permission(self, request) -> bool:
        return access.is_superuser(request.user)

    def has_change_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)

    def has_delete_permission(self, request, obj=None) -> bool:
        return access.is_superuser(request.user)
