from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from packages.audit import AuditAction, record
from packages.models import Project, ProjectMembership, ProjectRole

ACTOR = "manage.py set_member"


class Command(BaseCommand):
    help = (
        "Give USERNAME the role ROLE (viewer, runner, maintainer, owner) in PROJECT, or take them out of it with "
        "--remove. The user becomes staff, so they can log in to the admin; staff alone grants nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="the project's name")
        parser.add_argument("username")
        parser.add_argument("role", nargs="?", help=f"one of {', '.join(ProjectRole.values)}")
        parser.add_argument("--remove", action="store_true", help="remove the user from the project")

    def handle(self, project, username, role, remove, **options):
        project_obj = self._project(project)
        user = self._user(username)
        with transaction.atomic():  # the membership and its audit entry are kept together or not at all
            if remove:
                self._remove(project_obj, user, role)
            else:
                self._set(project_obj, user, self._role(role))

    def _set(self, project: Project, user, role: str) -> None:
        membership, created = ProjectMembership.objects.update_or_create(
            project=project, user=user, defaults={"role": role}
        )
        if not user.is_staff:  # members log in through the admin, which takes staff accounts only
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        record(AuditAction.SET_MEMBER, project, actor=ACTOR, details={"user": user.get_username(), "role": role})
        self.stdout.write(f"{user.get_username()} is now {membership.get_role_display().lower()} of {project}")

    def _remove(self, project: Project, user, role: str | None) -> None:
        if role is not None:
            raise CommandError("--remove takes no ROLE: set_member PROJECT USERNAME --remove")
        membership = ProjectMembership.objects.filter(project=project, user=user).first()
        if membership is None:
            raise CommandError(f"{user.get_username()} is not a member of {project}")
        membership.delete()
        details = {"user": user.get_username(), "role": membership.role}
        record(AuditAction.REMOVE_MEMBER, project, actor=ACTOR, details=details)
        self.stdout.write(f"{user.get_username()} is no longer a member of {project}")

    def _project(self, name: str) -> Project:
        try:
            return Project.objects.get(name=name)
        except Project.DoesNotExist:
            known = ", ".join(Project.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(f"no project named {name!r} (projects: {known})") from None

    def _user(self, username: str):
        User = get_user_model()
        try:
            return User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(
                f"no user named {username!r} (a superuser creates accounts in the admin, under Users)"
            ) from None

    def _role(self, role: str | None) -> str:
        if role not in ProjectRole.values:
            given = f"unknown role {role!r}" if role else "a ROLE is needed"
            raise CommandError(f"{given}: choose one of {', '.join(ProjectRole.values)}, or --remove")
        return role
