"""Script files kept across a package form that failed validation, so nobody chooses them again after a typo in
the cron.

A browser never re-fills a file input, so after a failed save each valid file is kept here, on the server, for
the person who uploaded it; the re-rendered form carries a signed token naming it (a hidden field of its row) and
says "kept: app.py (1.2 KB)". A plain resubmit hands the token back and the save stores the file, consuming the
kept copy in the same transaction. The token is signed (nobody can make up one) and also bound to its owner, whose
id is checked against the row's: one person's kept files are never usable by another, even with a stolen token.
Kept files expire after EXECUTOR_STAGED_UPLOAD_HOURS and the reaper deletes them (workers/reaper.py:reap).
A secrets.json is never kept (it would be a secret in clear at rest): the form asks for it again.
"""

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from .models import StagedUpload

SALT = "packages.staged_uploads"
PER_OWNER = 100  # kept files per person; staging more deletes their oldest (rule: bounded everything)
GONE = "The file kept from your last attempt is no longer available (kept files last {hours} hours): choose it again."


def lifetime() -> timedelta:
    return timedelta(hours=settings.EXECUTOR_STAGED_UPLOAD_HOURS)


def stage(owner, file_name: str, content: bytes) -> tuple[StagedUpload, str]:
    """Keep `content` for `owner`: the kept row and the token their form carries back."""
    kept = StagedUpload.objects.create(owner=owner, file_name=file_name, content=content)
    surplus = StagedUpload.objects.filter(owner=owner).order_by("-created_at").values_list("pk", flat=True)[PER_OWNER:]
    StagedUpload.objects.filter(pk__in=list(surplus)).delete()
    return kept, signing.dumps({"id": str(kept.pk), "owner": owner.pk}, salt=SALT)


def load(owner, token: str, now: datetime | None = None) -> StagedUpload:
    """The kept file `token` names, if `owner` kept it and it has not expired; ValidationError otherwise (the same
    one whatever the reason, so a token tells nobody whether someone else's file exists)."""
    gone = ValidationError(GONE.format(hours=settings.EXECUTOR_STAGED_UPLOAD_HOURS), code="staged_upload_gone")
    try:
        payload = signing.loads(token, salt=SALT, max_age=lifetime())
        kept_id = uuid.UUID(payload["id"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise gone from None
    if owner is None or payload.get("owner") != owner.pk:
        raise gone
    since = (now or timezone.now()) - lifetime()
    kept = StagedUpload.objects.filter(pk=kept_id, owner=owner, created_at__gte=since).first()
    if kept is None:
        raise gone
    return kept


def describe(kept: StagedUpload) -> str:
    """'app.py (1.2 KB)'."""
    return f"{kept.file_name} ({filesizeformat(kept.size)})"


def sweep(now: datetime | None = None) -> int:
    """Delete the kept files past their lifetime; how many. Run by the reaper (workers/reaper.py)."""
    deleted, _ = StagedUpload.objects.filter(created_at__lt=(now or timezone.now()) - lifetime()).delete()
    return deleted
