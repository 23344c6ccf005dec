"""List filters that offer only what the user may see: a project filter lists the user's projects, never the
names of everyone else's (the list itself is already scoped; the choices must not leak either)."""

from django.contrib import admin

from . import access
from .access import Action


class ProjectListFilter(admin.RelatedFieldListFilter):
    """`("project", ProjectListFilter)` (or `("package__project", ...)`): the projects where the user may VIEW."""

    action = Action.VIEW

    def field_choices(self, field, request, model_admin) -> list[tuple[int, str]]:
        return [(project.pk, str(project)) for project in access.projects(request.user, self.action)]


class EditableProjectListFilter(ProjectListFilter):
    """The projects where the user may EDIT (e.g. the audit log, which maintainers and owners read)."""

    action = Action.EDIT
