"""The execution list's search and counts (bench/admin_lists.py times them on a million executions)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from executions.big_lists import EstimatedCountPaginator, _planner_rows
from executions.models import Execution, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(enqueued):
    alpha = trigger_execution(make_package("alpha_loader", {"a.py": "1"}), trigger_type=TriggerType.MANUAL)
    beta = trigger_execution(make_package("beta_report", {"a.py": "1"}), trigger_type=TriggerType.MANUAL)
    Execution.objects.filter(pk=beta.pk).update(name="Quarterly close")
    return alpha, beta


@pytest.mark.parametrize("term, expected", [
    (lambda a, b: str(a.id), "alpha"),
    (lambda a, b: a.short_id, "alpha"),
    (lambda a, b: b.correlation_id, "beta"),
    (lambda a, b: "beta_rep", "beta"),
    (lambda a, b: "Alpha Loader", "alpha"),
    (lambda a, b: "quarterly", "beta"),
])  # fmt: skip
def test_search_finds_by_id_short_id_cid_package_and_name(admin_client, runs, term, expected):
    alpha, beta = runs
    page = admin_client.get(reverse("admin:executions_execution_changelist"), {"q": term(alpha, beta)}).content
    found = {name for name, run in (("alpha", alpha), ("beta", beta)) if run.short_id.encode() in page}
    assert found == {expected}


def test_small_lists_count_exactly(runs):
    assert EstimatedCountPaginator(Execution.objects.all(), 100).count == 2
    assert EstimatedCountPaginator(Execution.objects.filter(status="pending"), 100).count == 2


def test_big_lists_take_the_planners_estimate_instead_of_counting(runs, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "ESTIMATE_ABOVE", -1)  # every list counts as big
    filtered = Execution.objects.filter(status="failed")  # no failed run: an exact count would be 0
    with CaptureQueriesContext(connection) as queries:
        count = EstimatedCountPaginator(filtered, 100).count
    assert [query["sql"].split()[0] for query in queries] == ["EXPLAIN"]
    assert count == _planner_rows(filtered) >= 1  # PostgreSQL's planner never estimates fewer than one row
