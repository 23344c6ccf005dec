"""The dashboard on the admin's front page, from executions in PostgreSQL."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions import dashboard
from executions.models import Execution, ExecutionStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]


def execution(package, status, *, seconds=None, reason="", days_ago=0):
    created = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    start = timezone.now() - timedelta(days=days_ago, minutes=5)
    Execution.objects.filter(pk=created.pk).update(
        status=status, status_reason=reason, created_at=start, started_at=start,
        finished_at=start + timedelta(seconds=seconds) if seconds is not None else None, worker_name="w1@host",
    )  # fmt: skip


def test_the_admin_index_shows_the_dashboard(admin_client, admin_user):
    fast, slow = make_package("fast_pkg", {"a.py": "1"}), make_package("slow_pkg", {"a.py": "1"})
    execution(fast, ExecutionStatus.COMPLETED, seconds=1)
    execution(slow, ExecutionStatus.COMPLETED, seconds=30)
    execution(slow, ExecutionStatus.COMPLETED, seconds=10, days_ago=3)
    execution(slow, ExecutionStatus.FAILED, seconds=2, reason="failed: step 1 (a.py) failed")
    execution(fast, ExecutionStatus.IN_PROGRESS)
    execution(fast, ExecutionStatus.COMPLETED, seconds=1, days_ago=40)  # outside the window

    page = admin_client.get("/admin/").content.decode()

    assert "Executions per day, last 14 days" in page and "Packages" in page  # the app list is still there
    assert "failed: step 1 (a.py) failed" in page and "w1@host" in page
    slowest = dashboard.time_per_package(admin_user)
    assert [(row["package__name"], row["average_ms"], row["runs"]) for row in slowest] == [
        ("Slow Pkg", 20000, 2), ("Fast Pkg", 1000, 1)]  # fmt: skip
    days = dashboard.executions_per_day(admin_user)
    assert len(days) == 14 and days[-1].counts == {"completed": 2, "failed": 1, "in_progress": 1}
    assert days[-4].counts == {"completed": 1} and sum(day.total for day in days) == 5
