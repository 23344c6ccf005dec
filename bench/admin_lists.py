"""Admin pages on a big ledger: `make bench-admin` (or `.venv/bin/python bench/admin_lists.py [N]`).

Creates a throw-away database (`executor_bench_admin`) holding N executions (default 1,000,000) of 50 packages over
the last 90 days, 3 steps each for the newest 100,000, a few hundred saved, and times each admin page a person
opens most (median of 5 requests through Django's test client, after one warm-up), with the number of SQL queries.
"""

import statistics
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.databases import SERVER, on_server, recreate_database, use_bench_environment  # noqa: E402

DATABASE = "executor_bench_admin"


def configure(database: str = DATABASE, **extra: str) -> None:
    """This process's settings (bench/retention.py times the same pages on a database of its own)."""
    use_bench_environment(
        on_server(database),
        ALLOWED_HOSTS="testserver",
        DEBUG="true",  # static files without collectstatic; query capture needs the debug cursor anyway
        **extra,
    )


PAGES = [
    ("admin index (dashboard)", "/admin/"),
    ("executions", "/admin/executions/execution/"),
    ("executions, status=failed", "/admin/executions/execution/?status__exact=failed"),
    ("executions of one package", "/admin/executions/execution/?package__id__exact=7"),
    ("executions, search by cid", "/admin/executions/execution/?q={cid}"),
    ("executions, page 50", "/admin/executions/execution/?p=50"),
    ("saved executions", "/admin/executions/savedexecution/"),
    ("one execution", "/admin/executions/execution/{execution_id}/change/"),
]


def main(count: int, database: str = DATABASE) -> None:
    recreate_database(SERVER, database)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    fill(count)
    print(f"{count:,} executions created in {time.perf_counter() - started:.0f} s")
    for label, (milliseconds, queries) in time_pages().items():
        print(f"{label:32s} {milliseconds:7.0f} ms  {queries:3d} queries")


def fill(count: int) -> None:
    """Rows straight from SQL (generate_series): the ORM would take an hour for a million."""
    from django.db import connection

    from packages.models import Package

    for n in range(50):
        Package.objects.create(name=f"Package {n}", package_name=f"package_{n}")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO executions_execution (id, package_id, status, status_reason, trigger_type, params,
                correlation_id, worker_name, lease_owner, retries, name, description, saved, created_at, started_at,
                finished_at, chain_depth, schedule, schedule_timezone, source_commit)
            SELECT gen_random_uuid(), (SELECT min(id) FROM packages_package) + n %% 50,
                   (ARRAY['completed','completed','completed','completed','failed','cancelled'])[1 + n %% 6],
                   '', (ARRAY['manual','scheduled','triggered'])[1 + n %% 3], '{"n": 1}',
                   md5(n::text), 'w@host', '', 0, CASE WHEN n %% 3000 = 0 THEN 'saved ' || n ELSE '' END, '',
                   n %% 3000 = 0, now() - (n || ' seconds')::interval * (90 * 86400.0 / %s),
                   now() - (n || ' seconds')::interval * (90 * 86400.0 / %s),
                   now() - (n || ' seconds')::interval * (90 * 86400.0 / %s) + (n %% 97 || ' seconds')::interval,
                   0, '', 'UTC', ''
            FROM generate_series(1, %s) AS n
            """,
            [count, count, count, count],
        )
        cursor.execute(
            """
            INSERT INTO executions_executionstep (execution_id, position, file_name, status, status_reason,
                stdout, stderr)
            SELECT e.id, p, 'step_' || p || '.py', 'completed', '', 'output', ''
            FROM (SELECT id FROM executions_execution ORDER BY created_at DESC LIMIT 100000) e,
                 generate_series(1, 3) AS p
            """
        )
        cursor.execute("ANALYZE")


def time_pages(requests: int = 5) -> dict[str, tuple[float, int]]:
    """Each page's median time (ms) over `requests` requests, after a warm-up, and its number of queries."""
    from django.contrib.auth.models import User
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from executions.models import Execution

    newest = Execution.objects.order_by("-created_at").first()
    client = Client()
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", password="bench")
    client.force_login(user)
    results = {}
    for label, template in PAGES:
        url = template.format(cid=newest.correlation_id, execution_id=newest.pk)
        client.get(url)  # warm-up
        timings = []
        for _ in range(requests):
            reset_queries()
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                timings.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        results[label] = (statistics.median(timings) * 1000, len(queries))
    return results


if __name__ == "__main__":
    configure()
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
