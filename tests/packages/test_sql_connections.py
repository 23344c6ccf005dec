"""packages/sql_connections.py: which URLs an administrator may store, what the admin shows of them, and which
database a package's config.json gets (the attacks through a real worker are in tests/security)."""

import pytest

from packages.models import Project, SqlConnection
from packages.sql_connections import InvalidSqlUrl, SqlConnectionError, check_url, describe, set_url, url_for
from tests.factories import make_package

PASSWORD = "s3cret-pa55"


@pytest.mark.parametrize(
    "url, message",
    [
        (f"mysql://app:{PASSWORD}@db/sales", "Not a PostgreSQL URL"),
        (f"host=db user=app password={PASSWORD} dbname=sales", "Not a PostgreSQL URL"),
        (f"postgresql://app:{PASSWORD}@db/sales?{PASSWORD}=1", "Not a valid PostgreSQL URL"),
        (f"postgresql://app:{PASSWORD}@/sales", "must name the host"),
        ("postgresql://db/sales", "must name the user"),
        (f"postgres://app:{PASSWORD}@db", "must name the database"),
        (f"postgres://app:{PASSWORD}@db:port/sales", "The port must be a number"),
    ],
)
def test_it_refuses_a_url_sql_steps_cannot_use_without_quoting_it(url, message):
    with pytest.raises(InvalidSqlUrl) as refused:
        check_url(url)
    assert message in str(refused.value)
    assert PASSWORD not in str(refused.value) and refused.value.__cause__ is None


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_it_accepts_a_postgresql_url_naming_host_user_and_database(scheme):
    assert check_url(f"{scheme}://app:{PASSWORD}@db:6432/sales?sslmode=require")["dbname"] == "sales"


def test_it_describes_a_connection_without_its_password():
    connection = SqlConnection(name="warehouse")
    set_url(connection, f"postgresql://app:{PASSWORD}@db:6432/sales?sslmode=require")

    assert describe(connection) == "app@db:6432/sales"
    assert PASSWORD not in connection.url_encrypted


@pytest.mark.django_db
def test_it_prefers_the_named_connection_and_falls_back_to_the_platform_default(settings):
    settings.EXECUTOR_SQL_DATABASE_URL = "postgresql://default@db/default"
    connection = SqlConnection(name="warehouse")
    set_url(connection, "postgresql://app@db/warehouse")
    connection.save()
    package = make_package(project=Project.objects.create(name="Sales"))

    assert url_for(package, {"sql_connection": "warehouse"}) == "postgresql://app@db/warehouse"
    assert url_for(package, {}) == "postgresql://default@db/default"


@pytest.mark.django_db
def test_it_refuses_a_platform_default_that_does_not_name_its_user(settings):
    settings.EXECUTOR_SQL_DATABASE_URL = f"postgresql://:{PASSWORD}@db/default"  # libpq would take PGUSER instead

    with pytest.raises(SqlConnectionError) as refused:
        url_for(make_package(), {})
    assert str(refused.value) == (
        "the platform default EXECUTOR_SQL_DATABASE_URL is not usable: The URL must name the user: "
        "postgresql://user:password@host:5432/database."
    )
