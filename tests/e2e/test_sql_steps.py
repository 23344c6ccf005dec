"""SQL steps through a real worker, against a PostgreSQL database created for the tests."""

import json

import psycopg2
import pytest

from executions.models import ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.models import SqlConnection
from packages.sql_connections import set_url
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LOAD = """
DROP TABLE IF EXISTS e2e_sales;
CREATE TABLE e2e_sales (region text, amount int);
INSERT INTO e2e_sales VALUES ('{{ config.region }}', {{ amount|int }}), ('{{ config.region }}', {{ amount|int * 2 }});
SELECT region, sum(amount) FROM e2e_sales GROUP BY region;
"""


def run(package_name: str, files: dict, url: str, **params):
    """Run a package whose config.json names an administrator's SQL connection to `url`."""
    connection = SqlConnection(name="e2e_dwh")
    set_url(connection, url)
    connection.save()
    config = json.dumps({"sql_connection": "e2e_dwh", "region": "north"})
    package = make_package(package_name, {"config.json": config, **files})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    return wait_until_finished(execution, timeout=60)


def test_a_templated_multi_statement_sql_step_runs_on_a_real_worker(celery_worker, sql_database_url):
    execution = run("sales_load", {"load.sql": LOAD}, sql_database_url, amount=21)

    assert execution.status == ExecutionStatus.COMPLETED, execution.status_reason
    step = execution.steps.get(file_name="load.sql")
    assert step.stdout == "affected rows: 1\nregion\tsum\nnorth\t63\n"
    with psycopg2.connect(sql_database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM e2e_sales")
        assert cursor.fetchone() == (2,)
    connection.close()


def test_a_database_error_fails_the_step_with_the_database_s_message(celery_worker, sql_database_url):
    execution = run("sales_broken", {"broken.sql": "SELECT * FROM no_such_table;"}, sql_database_url)

    step = execution.steps.get(file_name="broken.sql")
    assert (execution.status, step.status) == (ExecutionStatus.FAILED, StepStatus.FAILED)
    assert 'relation "no_such_table" does not exist' in step.stderr + step.status_reason
