"""The gauges /metrics samples when it is scraped (registered in executions/apps.py; executor_project/metrics.py
runs each at most once per EXECUTOR_METRICS_SAMPLE_SECONDS per process, and counts and logs their failures).

Both are cheap on purpose: one pipelined LLEN per lane, and one COUNT of the pending and running executions that
the (status, created_at) index answers, however many finished executions the ledger holds.
"""

from django.db.models import Count

from executor_project import metrics, publishing

from .models import Execution, ExecutionStatus
from .queueing import LANES

CURRENT = (ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS)


def queue_depths() -> None:
    """executor_queue_depth per lane: messages waiting in Redis (not the ones a worker has reserved)."""
    with publishing.broker_client() as client:
        pipe = client.pipeline(transaction=False)
        for lane in LANES:
            pipe.llen(lane)
        depths = pipe.execute()
    for lane, depth in zip(LANES, depths, strict=True):
        metrics.QUEUE_DEPTH.labels(lane=lane).set(depth)


def executions_by_status() -> None:
    """executor_executions_current: executions now pending (recorded, waiting for a worker) and in progress."""
    counts = dict(
        Execution.objects.filter(status__in=CURRENT).values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    for status in CURRENT:
        metrics.EXECUTIONS_CURRENT.labels(status=status).set(counts.get(status, 0))
