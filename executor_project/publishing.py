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
import weakref
from collections.abc import Iterator, Sequence

from .celery import app

# One Redis client per kombu channel, for as long as the channel lives: kombu builds a new one for each use
# (~0.2 ms of CPU, mostly its table of reply parsers), and a web request would build two or three.
_clients: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()


def publish(task: str, args: Sequence, *, queue: str, producer=None) -> None:
    """Send `task(*args)` to `queue`; on `producer` if given (a Transaction's: the message then waits for its
    EXEC). Raises what the broker raised once CELERY_TASK_PUBLISH_RETRY_POLICY gives up (about a second)."""
    app.send_task(task, args=list(args), queue=queue, producer=producer, ignore_result=True)


@contextlib.contextmanager
def broker_client() -> Iterator:
    """A client of the broker's own Redis (the same URL, database and options as the messages), for what is kept
    beside them (the queued markers of executions/queueing.py)."""
    with app.producer_or_acquire() as acquired:
        yield _client_of(acquired.channel)


class Transaction:
    """Messages and commands of our own that Redis runs together or not at all (MULTI/EXEC), in one round trip:
    `publish` what `publish()` would, `pipe` for the rest, then `execute()`. Nothing is sent before that."""

    def __init__(self, producer, pipe) -> None:
        self.producer, self.pipe = producer, pipe

    def publish(self, task: str, args: Sequence, *, queue: str) -> None:
        publish(task, args, queue=queue, producer=self.producer)

    def execute(self) -> None:
        """Raises what Redis or the connection raised. A command Redis refuses as it is queued (a full Redis: OOM)
        or a connection lost before EXEC runs none of them; one lost after EXEC went out, all of them."""
        self.pipe.execute()


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """A Transaction on a producer from Celery's pool.

    kombu's Redis channel can hand a message's final commands (its LPUSH) to a batch instead of running them
    (Producer.batch(), which sends them in a pipeline without MULTI); `_Collector` stands in for that batch and puts
    them in this transaction's pipeline. Private kombu interfaces, pinned in requirements.txt, and covered by
    tests/executions/test_queueing.py: a message that did not reach its queue fails them."""
    with app.producer_or_acquire() as producer:
        pipe = _client_of(producer.channel).pipeline(transaction=True)
        producer._batch_local.current = _Collector(pipe)
        try:
            yield Transaction(producer, pipe)
        finally:
            del producer._batch_local.current
            pipe.reset()


class _Collector:
    """The parts of kombu's publish batch that Producer.publish and the Redis channel call."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def publish(self, channel, message, **kwargs):  # Producer._publish, for each message
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args) -> None:  # the Redis channel's _put: "lpush", queue, message
        getattr(self.pipe, name)(*args)


def _client_of(channel):
    client = _clients.get(channel)
    if client is None:
        with channel.conn_or_acquire() as client:  # a new client on the channel's connection pool
            _clients[channel] = client
    return client
