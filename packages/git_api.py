"""Sync Now over HTTP: POST /fx/git/repositories/<id>/sync queues a sync, GET /fx/git/repositories/<id> shows its
status and last report. Mounted on the /fx/ API (executor_project/api.py) with its key auth; both need the scope
git:sync. The push webhook beside it (packages/git_webhook.py) queues the same sync."""

from datetime import datetime
from typing import Any

from ninja import Router, Schema, Status
from ninja.errors import HttpError

from executions.models import ApiKey, ApiScope
from executor_project.api_auth import Error, key_with, within_reach

from .audit import AuditAction, record
from .git_webhook import queue_sync
from .models import GitRepository

router = Router()


class RepositoryOut(Schema):
    id: int
    url: str
    branch: str
    status: str
    last_sync_at: datetime | None
    current_commit: str
    last_error: str
    last_report: dict[str, Any]
    branches: list[str]


# The operation ids are part of the published OpenAPI document (clients are generated from it): they keep the
# names ninja gave these endpoints when they lived in executions/api.py.
@router.post("/git/repositories/{repository_id}/sync",
             response={202: RepositoryOut, 401: Error, 403: Error, 404: Error, 429: Error},
             summary="Sync a Git repository now (queued)",
             operation_id="executions_api_sync_repository_now")  # fmt: skip
def sync_repository_now(request, repository_id: int):
    """Needs the scope git:sync; another project's repository is 404, like a missing one."""
    api_key = key_with(request, ApiScope.GIT_SYNC)
    repository = _repository(repository_id, api_key)
    # Recorded first, then queued (a broker that is down leaves a visible "synced" request, not a silent one).
    record(AuditAction.SYNC, repository, api_key=api_key, details={"via": "API"})
    queue_sync(repository)
    return Status(202, repository)


@router.get("/git/repositories/{repository_id}",
            response={200: RepositoryOut, 401: Error, 403: Error, 404: Error, 429: Error},
            summary="A Git repository's sync status and last report",
            operation_id="executions_api_get_repository")  # fmt: skip
def get_repository(request, repository_id: int):
    """Needs the scope git:sync; another project's repository is 404, like a missing one."""
    return _repository(repository_id, key_with(request, ApiScope.GIT_SYNC))


def _repository(repository_id: int, api_key: ApiKey) -> GitRepository:
    repository = within_reach(GitRepository.objects.filter(pk=repository_id), api_key, "project_id").first()
    if repository is None:
        raise HttpError(404, f"No repository {repository_id}.")
    return repository
