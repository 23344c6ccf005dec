"""Retention on a big ledger: `make bench-retention` (or `.venv/bin/python bench/retention.py [N]`).

Builds `executor_bench_retention` as `make bench-admin` builds its database (N executions, default 1,000,000, of 50
packages over 90 days, 3 steps each for the newest 100,000) plus one step with output for every older execution,
so that the pruned runs take their steps with them. Retention is set to 9 days (failed ones too), so 90 % of the
executions are due. It prints the plan of one batch's query (EXPLAIN), times the admin pages of
bench/admin_lists.py round after round for two minutes, then again and again while `manage.py prune_executions`
(another process, the default batch size and pause) deletes; and the pruning's own time.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench import admin_lists  # noqa: E402
from bench.databases import SERVER, recreate_database  # noqa: E402

DATABASE = "executor_bench_retention"
RULES = {"EXECUTOR_RETENTION_DAYS": "9", "EXECUTOR_RETENTION_FAILED_DAYS": "9", "EXECUTOR_RETENTION_KEEP_LAST": "20"}
admin_lists.configure(DATABASE, **RULES)


def main(count: int) -> None:
    recreate_database(SERVER, DATABASE)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    admin_lists.fill(count)
    _older_steps()
    print(f"{count:,} executions created in {time.perf_counter() - started:.0f} s; {_sizes()}")
    _index_build_time()
    _explain()
    before = _rounds_for(BASELINE_SECONDS)
    during, pruned = _pages_while_pruning()
    print(pruned)
    print(f"page: median (max) of each round's median, ms; {len(before)} rounds before, {len(during)} during")
    print(f"{'':32s} {'before':>7s} {'(max)':>7s} {'during':>7s} {'(max)':>7s}")
    for label in admin_lists.time_pages(requests=1):
        without, with_pruning = ([timings[label][0] for timings in rounds] for rounds in (before, during))
        print(f"{label:32s} {statistics.median(without):7.0f} {max(without):7.0f} "
              f"{statistics.median(with_pruning):7.0f} {max(with_pruning):7.0f}")  # fmt: skip
    print(f"after: {_sizes()}")


# Rounds of page timings before pruning, for a baseline taken under the same load from other processes as the
# rounds during it (on a shared machine one round is not a baseline).
BASELINE_SECONDS = 120


def _rounds_for(seconds: float) -> list[dict]:
    rounds, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        rounds.append(admin_lists.time_pages(requests=3))
    return rounds


def _older_steps() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO executions_executionstep (execution_id, position, file_name, status, status_reason,
                stdout, stderr)
            SELECT e.id, 1, 'step_1.py', 'completed', '', 'output of an old run', ''
            FROM executions_execution e WHERE NOT EXISTS (SELECT 1 FROM executions_executionstep s
                                                          WHERE s.execution_id = e.id)
            """
        )
        cursor.execute("ANALYZE")


def _sizes() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM executions_execution), (SELECT count(*) FROM "
                       "executions_executionstep), pg_size_pretty(pg_database_size(current_database()))")  # fmt: skip
        executions, steps, size = cursor.fetchone()
    return f"{executions:,} executions, {steps:,} steps, database {size}"


def _index_build_time() -> None:
    """What the migration's CREATE INDEX costs on a full table (it blocks writes to the table meanwhile)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX execution_retention")
        started = time.perf_counter()
        cursor.execute("CREATE INDEX execution_retention ON executions_execution (package_id, status, created_at)")
        print(f"CREATE INDEX execution_retention on the full table: {time.perf_counter() - started:.1f} s")


def _explain() -> None:
    """The plan of one batch's query as retention runs it (executions/retention.py: candidates, _pages)."""
    from executions import retention

    plan = retention.plan()
    selection = next(s for s in plan.selections if s.status == "completed")
    page = retention.candidates(selection, plan.kept_ids).order_by("created_at", "pk").values_list("pk")[:1000]
    text = page.explain(analyze=True, buffers=True)
    print("EXPLAIN ANALYZE of a batch's query:\n  " + "\n  ".join(text.splitlines()))


def _pages_while_pruning() -> tuple[list[dict], str]:
    """Time the pages round after round while another process prunes; its output."""
    started = time.perf_counter()
    pruning = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "prune_executions"],
        env={**os.environ, **RULES, "DEBUG": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rounds = []
    while pruning.poll() is None:
        rounds.append(admin_lists.time_pages(requests=3))
    output = pruning.communicate()[0]
    return rounds, f"{output.strip()}\npruning took {time.perf_counter() - started:.0f} s (wall, pages timed meanwhile)"


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
