"""Throw-away benchmark databases on DATABASE_URL's server."""

from urllib.parse import urlsplit


def recreate_database(server_url: str, name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(urlsplit(server_url)._replace(path="/postgres").geturl())
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
