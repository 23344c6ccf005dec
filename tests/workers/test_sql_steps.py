"""SQL steps against a real PostgreSQL database created for these tests (not the executor's own), which is the
platform default (EXECUTOR_SQL_DATABASE_URL) unless a test names an administrator's SQL connection."""

from urllib.parse import urlsplit

import psycopg2
import pytest

from executions.models import ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import SqlConnection
from packages.sql_connections import set_url
from tests.factories import make_package
from workers import runner

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sql_setup(sql_database_url, settings, monkeypatch):
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)
    settings.EXECUTOR_SQL_DATABASE_URL = sql_database_url
    with psycopg2.connect(sql_database_url) as connection, connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS invoices; CREATE TABLE invoices (id int, region text, amount int)")
    connection.close()


def run_sql(files: dict, **params):
    package = make_package(files=files)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


def rows(url: str, query: str):
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        result = cursor.fetchall()
    connection.close()
    return result


def test_several_statements_run_and_the_last_one_s_rows_are_shown(sql_database_url):
    sql = (
        "INSERT INTO invoices VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30);\n"
        "SELECT id, amount FROM invoices WHERE region = 'eu' ORDER BY id;"
    )
    step = run_sql({"load.sql": sql}).steps.get()
    assert step.status == StepStatus.COMPLETED, step.stderr
    assert step.stdout == "affected rows: 2\nid\tamount\n1\t10\n3\t30\n"


def test_the_template_gets_the_run_parameters_and_config(sql_database_url):
    files = {
        "config.json": '{"table": "invoices"}',
        "insert.sql": "INSERT INTO {{ config.table }} VALUES ({{ invoice_id|int }}, '{{ region }}', 5)",
    }
    execution = run_sql(files, invoice_id=7, region="apac")
    assert execution.status == ExecutionStatus.COMPLETED, execution.steps.last().stderr
    assert execution.steps.get(file_name="insert.sql").stdout == "affected rows: 1\n"
    assert rows(sql_database_url, "SELECT id, region FROM invoices") == [(7, "apac")]


def test_a_database_error_fails_the_step_and_rolls_everything_back(sql_database_url):
    sql = "INSERT INTO invoices VALUES (1, 'eu', 10);\nINSERT INTO no_such_table VALUES (1);"
    step = run_sql({"bad.sql": sql}).steps.get()
    assert (step.status, step.exit_code) == (StepStatus.FAILED, 1)
    assert 'relation "no_such_table" does not exist' in step.stderr
    assert rows(sql_database_url, "SELECT count(*) FROM invoices") == [(0,)]


def test_an_undefined_template_name_fails_with_a_message():
    step = run_sql({"t.sql": "SELECT {{ missing }}"}).steps.get()
    assert step.status == StepStatus.FAILED
    assert "template error: 'missing' is undefined" in step.stderr


def test_the_statement_timeout_applies(settings):
    settings.EXECUTOR_SQL_STATEMENT_TIMEOUT_SECONDS = 1
    step = run_sql({"slow.sql": "SELECT pg_sleep(5)"}).steps.get()
    assert step.status == StepStatus.FAILED
    assert "canceling statement due to statement timeout" in step.stderr


def test_a_named_sql_connection_is_used_instead_of_the_platform_default(sql_database_url, settings):
    settings.EXECUTOR_SQL_DATABASE_URL = urlsplit(sql_database_url)._replace(path="/postgres").geturl()
    connection = SqlConnection(name="reporting")
    set_url(connection, sql_database_url)
    connection.save()
    package = make_package(
        files={"config.json": '{"sql_connection": "reporting"}', "q.sql": "SELECT current_database()"}
    )
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    step = execution.steps.get(file_name="q.sql")
    assert step.status == StepStatus.COMPLETED, step.stderr
    assert step.stdout == f"affected rows: 1\ncurrent_database\n{urlsplit(sql_database_url).path[1:]}\n"


def test_without_a_database_the_step_fails_with_a_clear_reason(settings):
    settings.EXECUTOR_SQL_DATABASE_URL = ""
    step = run_sql({"q.sql": "SELECT 1"}).steps.get()
    assert step.status == StepStatus.FAILED
    assert step.status_reason.startswith("failed: no SQL connection: name one in config.json (sql_connection)")
