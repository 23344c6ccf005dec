"""Publishing executions to the real Redis broker, with the markers that say what is queued."""

import pytest
import redis
from django.conf import settings

from executions.models import Execution, TriggerType
from executions.queueing import MARKER_PREFIX, enqueue_many, queued_ids
from executions.services import trigger_execution
from tests.factories import make_package

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_enqueue_many_publishes_every_execution_and_marks_it_queued(broker):
    package = make_package(files={"a.py": ""})
    executions = [trigger_execution(package, trigger_type=TriggerType.MANUAL) for _ in range(3)]
    broker.flushdb()  # drop what trigger_execution published on commit

    assert enqueue_many(executions) == 3

    assert broker.llen("default") == 3
    ids = {str(e.id) for e in executions}
    assert queued_ids(sorted(ids)) == ids
    assert all(broker.ttl(MARKER_PREFIX + i) > 0 for i in ids)
    assert all(e.queued for e in executions)
    assert Execution.objects.filter(pk__in=ids, enqueued_at__isnull=False).count() == 3
