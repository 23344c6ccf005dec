import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, beat_init

from . import log_format
from .liveness import record_beat_ticks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "executor_project.settings")
# Celery's Django fixup runs Django's system checks when a worker starts. They import the URL conf and with it the
# HTTP API's libraries (ninja, pydantic): ~11 MiB in every worker process, for code a worker never runs. The web
# and `manage.py migrate` run the checks; a worker reports its own start-up problems (workers/tasks.py).
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

app = Celery("executor_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each app's tasks.py (workers/, executions/, packages/), imported when a worker or beat starts, not before: the web
# side publishes by name (executor_project/publishing.py) and never loads a worker's machinery.
app.autodiscover_tasks()
# Beat records its ticks in Redis: its liveness, read by `manage.py check_health beat` and the dashboard. Only
# beat sends beat_init.
beat_init.connect(record_beat_ticks)


@after_setup_logger.connect
@after_setup_task_logger.connect
def json_logs(logger=None, **kwargs) -> None:
    """LOG_FORMAT=json for the worker's and beat's lines too (executor_project/log_format.py says why here)."""
    from django.conf import settings

    log_format.apply_to(logger, settings.LOG_FORMAT)
