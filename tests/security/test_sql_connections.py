"""SQL connections are admin-owned: a package author cannot point SQL steps at a database of their choosing.

The attacks run as their author would try them: through the real runner and a real sandboxed step, against the
test PostgreSQL server, whose trust authentication makes its `postgres` database a superuser's prize. Each test
asserts the refusal and that nothing happened in the database the attacker aimed at.
"""

import json
import os
import uuid
from urllib.parse import urlsplit

import psycopg2
import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from executions.models import Execution, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.encryption import decrypt
from packages.models import Package, Project, Secret, SecretScope, SqlConnection
from packages.sql_connections import set_url
from tests.factories import make_package
from workers import runner

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def server_postgres_url() -> str:
    """The test server's `postgres` database, as its superuser: what an attacker would aim at."""
    return urlsplit(os.environ["DATABASE_URL"])._replace(path="/postgres").geturl()


@pytest.fixture
def pwned(server_postgres_url):
    """A table and a role name unique to this test (roles are server-wide, and other test runs share the server),
    dropped afterwards in case an attack got through."""
    name = f"pwned_{uuid.uuid4().hex[:10]}"
    yield name
    with connect(server_postgres_url) as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}; DROP ROLE IF EXISTS {name}")


@pytest.fixture
def sales() -> Project:
    return Project.objects.create(name="Sales")


@pytest.fixture
def hr() -> Project:
    return Project.objects.create(name="HR")


class connect:
    """An autocommit cursor on `url`, closed with its connection."""

    def __init__(self, url: str):
        self.connection = psycopg2.connect(url)
        self.connection.autocommit = True

    def __enter__(self):
        return self.connection.cursor()

    def __exit__(self, *exc_info):
        self.connection.close()


def table_exists(url: str, name: str) -> bool:
    with connect(url) as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{name}"])
        return cursor.fetchone()[0]


def role_exists(url: str, name: str) -> bool:
    with connect(url) as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [name])
        return cursor.fetchone()[0]


def make_connection(name: str, url: str, project: Project | None = None) -> SqlConnection:
    connection = SqlConnection(name=name, project=project)
    set_url(connection, url)
    connection.save()
    return connection


def attack_sql(name: str) -> str:
    return f"CREATE TABLE {name} (loot text);\nCREATE ROLE {name} LOGIN SUPERUSER;"


def run(package: Package) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


def test_it_refuses_a_database_url_in_config_json(settings, sql_database_url, server_postgres_url, pwned, sales):
    settings.EXECUTOR_SQL_DATABASE_URL = sql_database_url  # a default exists: the refusal must not fall back to it
    config = json.dumps({"sql_database_url": server_postgres_url})
    package = make_package(files={"config.json": config, "attack.sql": attack_sql(pwned)}, project=sales)

    step = run(package).steps.get(file_name="attack.sql")

    assert step.status == StepStatus.FAILED
    assert step.status_reason == (
        "failed: config.json: sql_database_url is not read any more, packages cannot choose a database URL; ask an "
        'administrator for a named SQL connection and name it in config.json ("sql_connection": "<name>")'
    )
    assert not table_exists(server_postgres_url, pwned)
    assert not role_exists(server_postgres_url, pwned)
    assert not table_exists(sql_database_url, pwned)


def test_it_ignores_a_package_secret_sql_database_url(settings, server_postgres_url, pwned, sales):
    settings.EXECUTOR_SQL_DATABASE_URL = ""
    package = make_package(files={"attack.sql": attack_sql(pwned)}, project=sales)
    secret = Secret(scope=SecretScope.PACKAGE, package=package, name="SQL_DATABASE_URL")
    secret.set_value(server_postgres_url)
    secret.save()

    step = run(package).steps.get()

    assert step.status == StepStatus.FAILED
    assert step.status_reason.startswith("failed: no SQL connection: name one in config.json (sql_connection)")
    assert not table_exists(server_postgres_url, pwned)
    assert not role_exists(server_postgres_url, pwned)


def test_it_ignores_a_sql_database_url_a_step_sets_through_fx(settings, server_postgres_url, pwned, sales):
    """The step before sets a project secret with FX's secrets.set; the SQL step after it still does not read it."""
    settings.EXECUTOR_SQL_DATABASE_URL = ""
    plant = f"from fx_ef import context\ncontext.secrets.set('SQL_DATABASE_URL', {server_postgres_url!r}, 'project')\n"
    package = make_package(files={"plant.py": plant, "attack.sql": attack_sql(pwned)}, project=sales)

    execution = run(package)

    planted = execution.steps.get(file_name="plant.py")
    assert planted.status == StepStatus.COMPLETED, planted.stderr
    assert Secret.objects.get(scope=SecretScope.PROJECT, project=sales, name="SQL_DATABASE_URL")  # it was set
    step = execution.steps.get(file_name="attack.sql")
    assert step.status == StepStatus.FAILED
    assert step.status_reason.startswith("failed: no SQL connection: name one in config.json (sql_connection)")
    assert not table_exists(server_postgres_url, pwned)
    assert not role_exists(server_postgres_url, pwned)


def test_it_refuses_another_project_s_connection(sql_database_url, pwned, sales, hr):
    make_connection("hr_dwh", sql_database_url, project=hr)
    sql = f"CREATE TABLE {pwned} (loot text)"
    package = make_package(files={"config.json": '{"sql_connection": "hr_dwh"}', "attack.sql": sql}, project=sales)

    step = run(package).steps.get(file_name="attack.sql")

    assert step.status == StepStatus.FAILED
    assert step.status_reason == 'failed: SQL connection "hr_dwh" is not available to project Sales'
    assert not table_exists(sql_database_url, pwned)


def test_it_refuses_a_project_s_connection_to_a_package_without_a_project(sql_database_url, pwned, hr):
    make_connection("hr_dwh", sql_database_url, project=hr)
    sql = f"CREATE TABLE {pwned} (loot text)"
    package = make_package(files={"config.json": '{"sql_connection": "hr_dwh"}', "attack.sql": sql})

    step = run(package).steps.get(file_name="attack.sql")

    assert step.status_reason == 'failed: SQL connection "hr_dwh" is not available to packages without a project'
    assert not table_exists(sql_database_url, pwned)


def test_it_refuses_a_connection_name_that_does_not_exist(settings, sql_database_url, pwned, sales):
    settings.EXECUTOR_SQL_DATABASE_URL = sql_database_url  # not used instead of the missing one
    sql = f"CREATE TABLE {pwned} (loot text)"
    package = make_package(files={"config.json": '{"sql_connection": "nope"}', "q.sql": sql}, project=sales)

    step = run(package).steps.get(file_name="q.sql")

    assert step.status_reason == 'failed: no SQL connection named "nope"'
    assert not table_exists(sql_database_url, pwned)


def test_it_does_not_echo_a_url_put_where_a_connection_name_belongs(server_postgres_url, pwned, sales):
    config = json.dumps({"sql_connection": server_postgres_url.replace("postgres@", "postgres:hunter2@")})
    package = make_package(files={"config.json": config, "q.sql": f"CREATE TABLE {pwned} (loot text)"}, project=sales)

    step = run(package).steps.get(file_name="q.sql")

    assert step.status_reason == (
        "failed: config.json: sql_connection must be the name of a SQL connection (lowercase letters, digits, '_', '-')"
    )
    assert not table_exists(server_postgres_url, pwned)


def test_it_runs_a_project_s_steps_on_its_own_connection(sql_database_url, pwned, sales, hr):
    make_connection("sales_dwh", sql_database_url, project=sales)
    sql = f"CREATE TABLE {pwned} (loot text); SELECT current_database()"
    package = make_package(files={"config.json": '{"sql_connection": "sales_dwh"}', "q.sql": sql}, project=sales)

    step = run(package).steps.get(file_name="q.sql")

    assert step.status == StepStatus.COMPLETED, step.status_reason + step.stderr
    assert step.stdout == f"affected rows: 1\ncurrent_database\n{urlsplit(sql_database_url).path[1:]}\n"
    assert table_exists(sql_database_url, pwned)


def test_it_runs_any_project_s_steps_on_a_global_connection(sql_database_url, pwned, hr):
    make_connection("shared_dwh", sql_database_url)
    sql = f"CREATE TABLE {pwned} (loot text)"
    package = make_package(files={"config.json": '{"sql_connection": "shared_dwh"}', "q.sql": sql}, project=hr)

    step = run(package).steps.get(file_name="q.sql")

    assert step.status == StepStatus.COMPLETED, step.status_reason + step.stderr
    assert table_exists(sql_database_url, pwned)


# The admin: only user, host, port and database of a URL are ever shown.

PASSWORD = "Tr0ub4dor-never-shown"


@pytest.fixture
def warehouse_url(sql_database_url) -> str:
    parts = urlsplit(sql_database_url)
    return parts._replace(netloc=f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}").geturl()


def connection_form(**overrides) -> dict:
    return {"name": "warehouse", "description": "Sales data warehouse", "project": "", "url": "", **overrides}


def test_it_never_shows_a_connection_s_password(admin_client, warehouse_url, sql_database_url):
    added = admin_client.post(reverse("admin:packages_sqlconnection_add"), connection_form(url=warehouse_url))
    assert added.status_code == 302, added.content.decode()
    connection = SqlConnection.objects.get(name="warehouse")

    page = admin_client.get(reverse("admin:packages_sqlconnection_change", args=[connection.pk])).content.decode()

    assert PASSWORD not in page
    parts = urlsplit(warehouse_url)
    assert f"{parts.username}@{parts.hostname}:{parts.port}/{parts.path[1:]}" in page  # to tell connections apart
    assert PASSWORD not in connection.url_encrypted
    assert PASSWORD not in admin_client.get(reverse("admin:packages_sqlconnection_changelist")).content.decode()


def test_it_keeps_the_stored_url_when_the_field_is_left_empty(admin_client, warehouse_url):
    connection = make_connection("warehouse", warehouse_url)
    change_url = reverse("admin:packages_sqlconnection_change", args=[connection.pk])

    response = admin_client.post(change_url, connection_form(description="renamed"))

    assert response.status_code == 302, response.content.decode()
    connection.refresh_from_db()
    assert (connection.description, decrypt(connection.url_encrypted)) == ("renamed", warehouse_url)


def test_it_needs_a_url_for_a_new_connection(admin_client):
    response = admin_client.post(reverse("admin:packages_sqlconnection_add"), connection_form())

    assert "A new SQL connection needs a URL." in response.content.decode()
    assert not SqlConnection.objects.exists()


def test_it_refuses_a_url_that_is_not_postgresql_without_echoing_it(admin_client):
    url = f"mysql://root:{PASSWORD}@db:3306/sales"
    response = admin_client.post(reverse("admin:packages_sqlconnection_add"), connection_form(url=url))

    page = response.content.decode()
    assert "Not a PostgreSQL URL" in page
    assert PASSWORD not in page
    assert not SqlConnection.objects.exists()


def test_it_lets_only_users_with_the_model_permissions_manage_connections(client, warehouse_url):
    make_connection("warehouse", warehouse_url)
    client.force_login(User.objects.create_user("mallory", is_staff=True))

    assert client.get(reverse("admin:packages_sqlconnection_changelist")).status_code == 403
    assert (
        client.post(reverse("admin:packages_sqlconnection_add"), connection_form(url=warehouse_url)).status_code == 403
    )
