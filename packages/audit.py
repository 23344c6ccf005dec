"""The audit log: one AuditEntry per action a person or a key took (run, re-run, cancel, edit, sync, issue or revoke a
key, change a member). Call `record` inside the transaction of the action itself, so both are kept or neither.

Never put step output or secret values in `details`: name what changed (field names, parameter keys), do not copy
values. Actions recorded by the code: see AuditAction.
"""

from django.db import models

from .access import project_id_of
from .models import AuditEntry


class AuditAction(models.TextChoices):
    RUN = "run", "ran"
    RERUN = "rerun", "re-ran"
    CANCEL = "cancel", "cancelled"
    SAVE_RUN = "save_run", "saved or renamed a run"
    CREATE = "create", "created"
    EDIT = "edit", "edited"
    DELETE = "delete", "deleted"
    SYNC = "sync", "synced"
    ISSUE_KEY = "issue_key", "issued an API key"
    REVOKE_KEY = "revoke_key", "revoked an API key"
    REGENERATE_KEYS = "regenerate_keys", "regenerated deploy keys"
    SET_MEMBER = "set_member", "set a member's role"
    REMOVE_MEMBER = "remove_member", "removed a member"
    SEND_EVENT = "send_event", "sent an event"


def record(action: str, obj: models.Model | None = None, *, user=None, api_key=None, actor: str = "",
           project_id: int | None = None, details: dict | None = None) -> AuditEntry:  # fmt: skip
    """Write one entry. The project is the object's unless given; the actor is the user, else the API key, else
    `actor` (e.g. "beat" for a schedule)."""
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    if project_id is None and obj is not None:
        project_id = project_id_of(obj)
    who = actor or (user.get_username() if user else "") or (f"API key {api_key}" if api_key else "") or "system"
    return AuditEntry.objects.create(
        project_id=project_id,
        user=user,
        actor=who[:200],
        action=action,
        object_type=obj._meta.verbose_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:300] if obj is not None else "",
        details=details or {},
    )
