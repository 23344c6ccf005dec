"""The packages app's Celery tasks: syncing a Git repository, on a worker's maintenance lane.

Published by name from packages/git_webhook.py (a push webhook, the Sync Now API, the admin's sync actions); a
worker finds them by autodiscovery. dulwich is imported inside the tasks: only a worker that syncs carries it.
"""

import logging
from collections.abc import Collection

from celery import shared_task

from .models import GitRepository

logger = logging.getLogger(__name__)


@shared_task(name="executor.sync_repository", ignore_result=True)
def sync_repository(repository_id: int) -> None:
    """Sync the repository: import what its branch holds now."""
    _sync(repository_id)


@shared_task(name="executor.sync_repository_adopting", ignore_result=True)
def sync_repository_adopting(repository_id: int, adopt: list[str]) -> None:
    """Sync the repository, adopting the packages named in `adopt` if its directories match them (the admin action
    "Sync now, adopting the packages it left alone")."""
    _sync(repository_id, adopt=adopt)


def _sync(repository_id: int, adopt: Collection[str] = ()) -> None:
    from . import git_sync  # dulwich: ~10 MiB that only a worker which syncs needs to carry

    repository = GitRepository.objects.select_related("project").filter(pk=repository_id).first()
    if repository is None:
        logger.info("sync of repository %s, which no longer exists: ignored", repository_id)
        return
    git_sync.sync_repository(repository, adopt=adopt)
