"""The packages app's own Celery task, sent by packages/git_webhook.py and run by workers on the maintenance lane.

The plain sync is `executor.sync_repository` (workers/tasks.py); the one here also takes the package names an
administrator allowed the repository to adopt (the admin action "Sync now, adopting the packages it left alone").
"""

import logging

from celery import shared_task

from .models import GitRepository

logger = logging.getLogger(__name__)


@shared_task(name="executor.sync_repository_adopting", ignore_result=True)
def sync_repository_adopting(repository_id: int, adopt: list[str]) -> None:
    """Sync the repository, adopting the packages named in `adopt` if its directories match them."""
    from . import git_sync  # dulwich: only a worker that syncs needs to carry it

    repository = GitRepository.objects.select_related("project").filter(pk=repository_id).first()
    if repository is None:
        logger.info("sync of repository %s, which no longer exists: ignored", repository_id)
        return
    git_sync.sync_repository(repository, adopt=adopt)
