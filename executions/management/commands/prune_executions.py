"""Delete the executions past their retention now (executions/retention.py), or, with --dry-run, show what would go."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from executions import retention


class Command(BaseCommand):
    help = (
        "Delete executions past their retention (EXECUTOR_RETENTION_* and each package's overrides) with their steps' "
        "output, run-form files and the trigger events nothing refers to any more, in small batches; print the counts "
        "per package and reason. --dry-run deletes nothing and prints the same counts."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, default=settings.EXECUTOR_RETENTION_BATCH_SIZE,
                            help="Executions per transaction (EXECUTOR_RETENTION_BATCH_SIZE).")  # fmt: skip
        parser.add_argument("--pause-ms", type=int, default=settings.EXECUTOR_RETENTION_PAUSE_MS,
                            help="Pause between transactions (EXECUTOR_RETENTION_PAUSE_MS).")  # fmt: skip
        parser.add_argument("--max-seconds", type=float, default=None,
                            help="Stop after this long (default: when everything due is deleted).")  # fmt: skip

    def handle(self, *args, dry_run: bool, batch_size: int, pause_ms: int, max_seconds: float | None, **options):
        if not 1 <= batch_size <= 10_000:
            raise CommandError("--batch-size must be between 1 and 10000")
        if pause_ms < 0:
            raise CommandError("--pause-ms must not be negative")
        report = retention.prune(dry_run=dry_run, batch_size=batch_size, pause_ms=pause_ms, time_budget=max_seconds)
        verb = "would be deleted" if dry_run else "deleted"
        heading = f"Executions {verb}, per package and reason:"
        self.stdout.write(f"Dry run: nothing deleted. {heading}" if dry_run else heading)
        for (package_name, reason), count in sorted(report.executions.items()):
            if count:
                self.stdout.write(f"  {package_name}: {reason}: {count}")
        self.stdout.write(f"In all, {verb}: " + ", ".join(f"{what} {count}" for what, count in report.totals().items()))
        ending = "" if report.finished else " (stopped at --max-seconds; run it again to go on)"
        self.stdout.write(f"{report.batches} batches in {report.seconds:.1f} s{ending}")
