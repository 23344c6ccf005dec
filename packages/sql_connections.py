"""Which database a package's SQL steps reach: an administrator's decision, never the package's.

Administrators define SQL connections (``packages.models.SqlConnection``: a name, an encrypted URL, and a project,
or none for every project). A package names one in its config.json (``{"sql_connection": "warehouse"}``);
without a name its SQL steps use the platform default ``settings.EXECUTOR_SQL_DATABASE_URL``, set by the operator.
A package can no longer supply a URL: the old ``sql_database_url`` config key is refused with a message, and the
``SQL_DATABASE_URL`` secret (which a step could even set itself) is not read.

A URL holds a password: it is never put in an exception message, a log line or a page. ``describe()`` gives the
part an administrator may see (user, host, port, database).
"""

import psycopg2.extensions
from django.conf import settings
from django.core.exceptions import ValidationError

from .encryption import EncryptionError, decrypt, encrypt
from .models import Package, SqlConnection, package_name_validator

CONFIG_KEY = "sql_connection"
RETIRED_CONFIG_KEY = "sql_database_url"
_SCHEMES = ("postgresql://", "postgres://")  # SQL steps connect with psycopg2 (libpq URIs)
_URL_FORM = "postgresql://user:password@host:5432/database"
_REQUIRED = {"host": "host", "user": "user", "dbname": "database"}  # libpq parameter: what the message calls it


class SqlConnectionError(Exception):
    """A package's SQL steps have no usable database. The message is for the person; it never holds a URL."""


class InvalidSqlUrl(ValueError):
    """A URL that SQL steps cannot use. The message says what is wrong without quoting the URL."""


def check_url(url: str) -> dict[str, str]:
    """The URL's connection parameters as libpq reads them; InvalidSqlUrl unless it is a PostgreSQL URL naming a
    host, a user and a database.

    All three must be explicit: what a URL leaves out, libpq fills in from the connecting process's PG*
    environment variables, and a SQL step's environment is partly the package's.
    """
    if not url.startswith(_SCHEMES):
        raise InvalidSqlUrl(f"Not a PostgreSQL URL: use {_URL_FORM} (postgresql:// or postgres://).")
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        # `from None`, and not libpq's message: both may quote the URL, password included.
        raise InvalidSqlUrl(f"Not a valid PostgreSQL URL: use {_URL_FORM}.") from None
    missing = [label for key, label in _REQUIRED.items() if not params.get(key)]
    if missing:
        raise InvalidSqlUrl(f"The URL must name the {' and the '.join(missing)}: {_URL_FORM}.")
    if not all(port.isdigit() for port in params.get("port", "0").split(",")):  # libpq only finds out when connecting
        raise InvalidSqlUrl(f"The port must be a number: {_URL_FORM}.")
    return params


def set_url(connection: SqlConnection, url: str) -> None:
    """Store `url` encrypted on `connection` (not saved); InvalidSqlUrl if SQL steps could not use it."""
    check_url(url)
    connection.url_encrypted = encrypt(url)


def describe(connection: SqlConnection) -> str:
    """What an administrator may see of the stored URL, to tell connections apart: user@host:port/database.
    Never the password (nor any other query parameter)."""
    try:
        params = check_url(decrypt(connection.url_encrypted))
    except (EncryptionError, InvalidSqlUrl) as exc:
        return f"(unreadable: {exc})"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{params['user']}@{params['host']}{port}/{params['dbname']}"


def url_for(package: Package, config: dict) -> str:
    """The database URL `package`'s SQL steps use, given its parsed config.json.

    The connection config.json names (it must exist and be open to the package's project), else the platform
    default. SqlConnectionError, with a message for the person running the package, when there is none.
    """
    if RETIRED_CONFIG_KEY in config:
        raise SqlConnectionError(
            "config.json: sql_database_url is not read any more, packages cannot choose a database URL; ask an "
            'administrator for a named SQL connection and name it in config.json ("sql_connection": "<name>")'
        )
    if CONFIG_KEY in config:
        return _named_url(package, config[CONFIG_KEY])
    return _default_url()


def _named_url(package: Package, name) -> str:
    if not isinstance(name, str) or not _is_connection_name(name):
        # Not echoed: a package may have put anything here, a URL with its password included.
        raise SqlConnectionError(
            "config.json: sql_connection must be the name of a SQL connection (lowercase letters, digits, '_', '-')"
        )
    connection = SqlConnection.objects.filter(name=name).first()
    if connection is None:
        raise SqlConnectionError(f'no SQL connection named "{name}"')
    if connection.project_id is not None and connection.project_id != package.project_id:
        whose = f"project {package.project.name}" if package.project_id else "packages without a project"
        raise SqlConnectionError(f'SQL connection "{name}" is not available to {whose}')
    try:
        return decrypt(connection.url_encrypted)
    except EncryptionError as exc:
        raise SqlConnectionError(f'SQL connection "{name}": {exc}') from None


def _default_url() -> str:
    url = settings.EXECUTOR_SQL_DATABASE_URL
    if not url:
        raise SqlConnectionError(
            "no SQL connection: name one in config.json (sql_connection) that an administrator defined under "
            "SQL connections, or ask the operator to set the platform default EXECUTOR_SQL_DATABASE_URL"
        )
    try:
        check_url(url)
    except InvalidSqlUrl as exc:
        raise SqlConnectionError(f"the platform default EXECUTOR_SQL_DATABASE_URL is not usable: {exc}") from None
    return url


def _is_connection_name(name: str) -> bool:
    try:
        package_name_validator(name)  # the rule SqlConnection.name is saved under
    except ValidationError:
        return False
    return len(name) <= SqlConnection._meta.get_field("name").max_length
