"""Who may do what: the one place the role table lives. The admin, the run pages, the API and the commands ask here.

| action | viewer | runner | maintainer | owner |
|---|---|---|---|---|
| VIEW: see packages, executions, steps, results, events, state of the project | ✓ | ✓ | ✓ | ✓ |
| RUN: Run / Run… / Re-run / cancel / save and name runs | | ✓ | ✓ | ✓ |
| EDIT: packages, scripts, variables, package secrets, schedules (saved runs' too), subscriptions, Git | | | ✓ | ✓ |
| MANAGE: members, project API keys, project secrets | | | | ✓ |

Superusers may do everything, everywhere. An object of no project (platform secrets, platform API keys, SQL
connections for every project, a package not in a project) is the platform's: superusers only. Inactive users
may do nothing. A user's roles are read once per user object (one query per request) and kept on it.
"""

from enum import StrEnum

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404

from .models import Project, ProjectMembership, ProjectRole


class Action(StrEnum):
    VIEW = "view"
    RUN = "run"
    EDIT = "edit"
    MANAGE = "manage"


ALLOWED: dict[str, frozenset[Action]] = {
    ProjectRole.VIEWER: frozenset({Action.VIEW}),
    ProjectRole.RUNNER: frozenset({Action.VIEW, Action.RUN}),
    ProjectRole.MAINTAINER: frozenset({Action.VIEW, Action.RUN, Action.EDIT}),
    ProjectRole.OWNER: frozenset({Action.VIEW, Action.RUN, Action.EDIT, Action.MANAGE}),
}
_CACHE = "_executor_project_roles"


def roles(user) -> dict[int, str]:
    """project id -> the user's role there (empty for anonymous, inactive users)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return {}
    cached = getattr(user, _CACHE, None)
    if cached is None:
        cached = dict(ProjectMembership.objects.filter(user=user).values_list("project_id", "role"))
        setattr(user, _CACHE, cached)
    return cached


def is_superuser(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_superuser)


def project_ids(user, action: Action = Action.VIEW) -> set[int] | None:
    """The projects where `user` may do `action`; None means every project (a superuser)."""
    if is_superuser(user):
        return None
    return {project_id for project_id, role in roles(user).items() if action in ALLOWED[role]}


def can(user, action: Action, obj: Model | int | None) -> bool:
    """May `user` do `action` on `obj` (an object that belongs to a project, a Project, or a project id)?"""
    if is_superuser(user):
        return True
    project_id = obj if isinstance(obj, int) or obj is None else project_id_of(obj)
    if project_id is None:
        return False  # the platform's
    role = roles(user).get(project_id)
    return role is not None and action in ALLOWED[role]


def require(user, action: Action, obj: Model | None, what: str) -> None:
    """For views: 404 when `obj` is missing or the user may not see it (the same answer, so another project's
    objects cannot be probed), 403 when they may see it but not do `action`."""
    if obj is None or not can(user, Action.VIEW, obj):
        raise Http404(f"No {what}.")
    if not can(user, action, obj):
        raise PermissionDenied


def can_anywhere(user, action: Action) -> bool:
    """May `user` do `action` in at least one project (e.g. to show an Add button or a menu entry)?"""
    ids = project_ids(user, action)
    return ids is None or bool(ids)


def scoped(queryset: QuerySet, user, action: Action = Action.VIEW, path: str = "project") -> QuerySet:
    """`queryset` narrowed to the objects whose project (reached through `path`) allows `action` to `user`.
    Objects of no project stay only for superusers."""
    ids = project_ids(user, action)
    if ids is None:
        return queryset
    return queryset.filter(**{f"{path}__in": ids})


def projects(user, action: Action = Action.VIEW) -> QuerySet:
    return scoped(Project.objects.all(), user, action, path="pk")


def project_id_of(obj: Model) -> int | None:
    """The project an object belongs to, through the package or execution it belongs to if it has one (a package
    secret has both a package and an empty project), else its own project."""
    if isinstance(obj, Project):
        return obj.pk
    for parent in ("package", "execution"):
        if getattr(obj, f"{parent}_id", None) is not None:
            return project_id_of(getattr(obj, parent))
    return getattr(obj, "project_id", None)
