"""Push webhooks and the Sync Now API: both queue a sync of the repository on a worker (packages/git_sync.py)."""

import json
import logging

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .git_credentials import signature_is_valid
from .models import GitRepository

logger = logging.getLogger(__name__)


def queue_sync(repository: GitRepository) -> None:
    from workers.tasks import sync_repository  # the web process needs the task's signature only

    sync_repository.apply_async(args=[repository.pk], queue="maintenance")


@csrf_exempt
@require_POST
def push_webhook(request, repository_id: int):
    """GitHub-style push notification: `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body, with the webhook
    secret>`. A push to another branch, or GitHub's ping, syncs nothing."""
    repository = GitRepository.objects.filter(pk=repository_id).first()
    if repository is None:
        return JsonResponse({"detail": f"No repository {repository_id}."}, status=404)
    if not signature_is_valid(repository, request.body, request.headers.get("X-Hub-Signature-256")):
        logger.warning("webhook for %s refused: bad or missing signature", repository)
        return JsonResponse({"detail": "Missing or wrong X-Hub-Signature-256 (or no webhook secret is set)."},
                            status=403)  # fmt: skip
    try:
        ref = json.loads(request.body or b"{}").get("ref")
    except (ValueError, AttributeError):
        ref = None
    if request.headers.get("X-GitHub-Event") == "ping":
        return JsonResponse({"status": "pong"})
    if ref and ref != f"refs/heads/{repository.branch}":
        return JsonResponse({"status": f"ignored: a push to {ref}, not to {repository.branch}"})
    queue_sync(repository)
    return JsonResponse({"status": "sync queued"}, status=202)
