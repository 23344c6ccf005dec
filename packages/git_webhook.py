"""Push webhooks and the Sync Now API: both queue a sync of the repository on a worker (packages/git_sync.py)."""

import logging
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from executor_project import bounded_json, publishing

from .git_credentials import push_is_proven
from .models import GitRepository

logger = logging.getLogger(__name__)

# packages/tasks.py; published by name: the web process does not load the task's module (nor dulwich).
SYNC_TASK = "executor.sync_repository"
SYNC_ADOPTING_TASK = "executor.sync_repository_adopting"


def queue_sync(repository: GitRepository, adopt: Sequence[str] = ()) -> None:
    """Queue a sync of `repository` on the maintenance lane; with `adopt`, one that may take over the packages of
    those names. The web process never fetches a repository itself."""
    if adopt:
        publishing.publish(SYNC_ADOPTING_TASK, [repository.pk, sorted(adopt)], queue="maintenance")
    else:
        publishing.publish(SYNC_TASK, [repository.pk], queue="maintenance")


@csrf_exempt
@require_POST
def push_webhook(request, repository_id: int):
    """A push notification, proven by the repository's webhook secret (git_credentials.push_is_proven: GitHub's,
    Forgejo's or Gitea's signature, or GitLab's token). A push to another branch (once the repository knows its
    branch), or GitHub's ping, syncs nothing."""
    repository = GitRepository.objects.filter(pk=repository_id).first()
    if repository is None:
        return JsonResponse({"detail": f"No repository {repository_id}."}, status=404)
    try:
        body = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return JsonResponse({"detail": f"The body is larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."},
                            status=413)  # fmt: skip
    if not push_is_proven(repository, body, request.headers):
        logger.warning("webhook for %s refused: bad or missing signature or token", repository)
        return JsonResponse({"detail": "Missing or wrong X-Hub-Signature-256, X-Forgejo-Signature, X-Gitea-Signature "
                                       "or X-Gitlab-Token (or no webhook secret is set)."}, status=403)  # fmt: skip
    ref = _pushed_ref(body)
    if request.headers.get("X-GitHub-Event") == "ping":
        return JsonResponse({"status": "pong"})
    # A repository saved without a branch learns the remote's default branch at its first sync: any push may be it.
    if ref and repository.branch and ref != f"refs/heads/{repository.branch}":
        return JsonResponse({"status": f"ignored: a push to {ref}, not to {repository.branch}"})
    queue_sync(repository)
    return JsonResponse({"status": "sync queued"}, status=202)


def _pushed_ref(body: bytes) -> str | None:
    """The `ref` of a push payload. Anything else (not JSON, too deep, not an object, no string ref; e.g. a hook
    sent form-encoded) is None: the signature already proved the sender, and a sync of the branch is harmless."""
    try:
        document = bounded_json.loads(body or b"{}")
    except bounded_json.JSONRejected:
        return None
    ref = document.get("ref") if isinstance(document, dict) else None
    return ref if isinstance(ref, str) else None
