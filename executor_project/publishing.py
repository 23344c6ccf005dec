"""Publishing a Celery task by its name, so that the code that sends a message never imports the code that runs it.

The web side (executions/queueing.py, packages/git_webhook.py) and the reaper publish through here.
`app.send_task` builds the same message as the task's own `apply_async` (JSON, no result, the queue given)
without importing the module that defines the task, and with it a worker's machinery: workers/tasks.py loads the
runner and the sandbox, packages/tasks.py dulwich. Each app's tasks.py defines its tasks under these names, and a
worker finds them by autodiscovery (executor_project/celery.py).

A task's name is a contract: beat's stored PeriodicTasks and messages already in Redis name it, so it never
changes. Every publish names its queue (the lane); nothing is routed by configuration.
"""

import contextlib
from collections.abc import Iterator, Sequence

from .celery import app


def publish(task: str, args: Sequence, *, queue: str, producer=None) -> None:
    """Send `task(*args)` to `queue`; on `producer` if given (one from `producer()`, so that a batch shares its
    pipeline). Raises what the broker raised once CELERY_TASK_PUBLISH_RETRY_POLICY gives up (about a second)."""
    app.send_task(task, args=list(args), queue=queue, producer=producer, ignore_result=True)


@contextlib.contextmanager
def producer() -> Iterator:
    """A producer from Celery's pool for several publishes; `with producer.batch():` sends them in one pipeline."""
    with app.producer_or_acquire() as acquired:
        yield acquired


@contextlib.contextmanager
def broker_client(producer=None) -> Iterator:
    """A client of the broker's own Redis (the same URL, database and options as the messages), for what is kept
    beside them (the queued markers of executions/queueing.py); on `producer`'s connection if given."""
    with app.producer_or_acquire(producer) as acquired, acquired.channel.conn_or_acquire() as client:
        yield client
