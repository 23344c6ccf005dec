"""Retention: executions past their time are deleted in small batches, with everything that belongs to them.

The rules (settings EXECUTOR_RETENTION_*, each overridable per package; an empty override means the setting):

- a completed, cancelled or skipped execution goes when created more than `keep_days` ago (30);
- a failed one when created more than `keep_failed_days` ago (90), never sooner than `keep_days`;
- never: a pending or running execution, a saved run (`Execution.saved`), one of the package's newest `keep_last`
  executions of any status (20; ties on the boundary's created_at are kept too), nor a run whose later run (a
  script's `context.scheduler`, executions/later_runs.py) has not fired yet: that run reads its correlation id.

What goes with an execution is what its foreign keys say, read from the models so that a table added later follows
the same rule: CASCADE rows (step output, run-form files) are deleted, SET_NULL links are emptied (a child of a
deleted parent stays and shows as the root of what remains of its chain, executions/chains.py; a re-run loses its
`rerun_of`; the events a deleted run sent lose their sender). A saved run's beat task left from an execution's saved
days goes too. Trigger events are kept at least EXECUTOR_RETENTION_DAYS, then deleted once no execution they started
remains and their sender is gone; one that started nothing (no subscribers, stopped by a guard) goes then as well.
The audit log is not touched: it records who did what, not runs.

How, so that nobody notices on a big ledger: for each package and status, candidates are read oldest first on the
index (package, status, created_at), with keyset pagination (each page starts after the last row of the previous
one, never walking again over rows just deleted); each batch is deleted in its own short transaction (its rows
locked with SKIP LOCKED and checked again, so a row someone saves at that moment waits for the next run), then a
short pause. Old trigger events are read the same way on the index of received_at; that pass reads again, every
run, the old events still kept (their runs are kept): few, unless failed or saved runs started by events are many.
A dry run reads the same pages and counts what each batch would delete, so its report matches the
real run's.
"""

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from packages.models import Package

from . import later_runs, saved_runs
from .models import TERMINAL_EXECUTION_STATUSES, Execution, ExecutionStatus, TriggerEvent

logger = logging.getLogger(__name__)

EVENTS = "trigger events"
# The order in which a package's statuses are pruned (any order deletes the same rows; a fixed one reads better).
PRUNED_STATUSES = [ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED, ExecutionStatus.SKIPPED,
                   ExecutionStatus.FAILED]  # fmt: skip


@dataclass(frozen=True)
class Rules:
    """A package's retention: its own overrides, else the settings."""

    keep_days: int
    keep_failed_days: int
    keep_last: int

    @classmethod
    def of(cls, package: Package) -> "Rules":
        days = _or_setting(package.keep_days, settings.EXECUTOR_RETENTION_DAYS)
        failed_days = _or_setting(package.keep_failed_days, settings.EXECUTOR_RETENTION_FAILED_DAYS)
        return cls(days, max(days, failed_days), _or_setting(package.keep_last, settings.EXECUTOR_RETENTION_KEEP_LAST))

    def days_for(self, status: str) -> int:
        return self.keep_failed_days if status == ExecutionStatus.FAILED else self.keep_days


def _or_setting(override: int | None, setting: int) -> int:
    return setting if override is None else override


@dataclass(frozen=True)
class Selection:
    """What goes of one package's executions of one status: those created before `before`."""

    package_id: int
    package_name: str
    status: str
    days: int
    before: datetime

    @property
    def reason(self) -> str:
        return f"{self.status}, older than {self.days} days"


@dataclass
class Plan:
    """Every selection of one run, decided once at its start, and the executions kept whatever their age."""

    selections: list[Selection]
    kept_ids: set  # runs whose later run is still to come
    events_before: datetime

    def __post_init__(self) -> None:
        self._before = {(s.package_id, s.status): s.before for s in self.selections}

    def would_prune(self, row: "ExecutionRow") -> bool:
        """The Python twin of `candidates`: what the dry run uses to tell which events would lose all their runs."""
        before = self._before.get((row.package_id, row.status))
        return before is not None and row.created_at < before and not row.saved and str(row.pk) not in self.kept_ids


@dataclass(frozen=True)
class ExecutionRow:
    pk: object
    package_id: int
    status: str
    created_at: datetime
    saved: bool
    trigger_event_id: int | None


ROW_FIELDS = ("pk", "package_id", "status", "created_at", "saved", "trigger_event_id")


@dataclass
class Report:
    """What a run deleted (or, dry, would delete). `totals()` is what the task returns, for metrics and logs."""

    dry_run: bool
    executions: Counter = field(default_factory=Counter)  # (package name, reason) -> executions
    related: Counter = field(default_factory=Counter)  # model label (or EVENTS) -> rows that went with them
    batches: int = 0
    seconds: float = 0.0
    finished: bool = True  # False: stopped at its time budget; the next run goes on from where it is

    def totals(self) -> dict[str, int]:
        return {"executions": sum(self.executions.values()), **dict(sorted(self.related.items()))}


def plan(now: datetime | None = None) -> Plan:
    """Decide this run's selections: one per package and pruned status, bounded by age and by the last N kept."""
    now = now or timezone.now()
    selections = []
    for package in Package.objects.order_by("package_name").only("pk", "package_name", *OVERRIDES):
        rules = Rules.of(package)
        newest_kept = _newest_kept_boundary(package, rules.keep_last)
        if newest_kept is None:
            continue  # the package has no more executions than it keeps anyway
        for status in PRUNED_STATUSES:
            days = rules.days_for(status)
            before = min(now - timedelta(days=days), newest_kept)
            selections.append(Selection(package.pk, package.package_name, status, days, before))
    events_before = now - timedelta(days=settings.EXECUTOR_RETENTION_DAYS)
    return Plan(selections, _runs_with_later_runs_to_come(), events_before)


OVERRIDES = ("keep_days", "keep_failed_days", "keep_last")


def _newest_kept_boundary(package: Package, keep_last: int) -> datetime | None:
    """The created_at of the package's keep_last-th newest execution (older ones may go); None: it has no more than
    keep_last. One probe of the index (package, -created_at)."""
    if keep_last == 0:
        return timezone.now() + timedelta(days=1)  # no run is kept for being recent: every age bound is earlier
    newest = Execution.objects.filter(package=package).order_by("-created_at").values_list("created_at", flat=True)
    return newest[keep_last - 1 : keep_last].first()


def _runs_with_later_runs_to_come() -> set:
    """The executions that asked for a later run beat has not deleted yet (a handful: fired ones are deleted)."""
    kept = set()
    for kwargs in PeriodicTask.objects.filter(name__startswith=later_runs.TASK_PREFIX).values_list("kwargs", flat=True):
        try:  # beat's rows can be edited by hand: a malformed one protects nothing, and breaks nothing
            kept.add(str(uuid.UUID(json.loads(kwargs)["parent_execution_id"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return kept


def candidates(selection: Selection, kept_ids: set) -> models.QuerySet:
    """The executions `selection` deletes: on the index (package, status, created_at); saved runs are few."""
    executions = Execution.objects.filter(
        package_id=selection.package_id, status=selection.status, created_at__lt=selection.before, saved=False
    )
    return executions.exclude(pk__in=kept_ids) if kept_ids else executions


def prune(*, dry_run: bool = False, batch_size: int | None = None, pause_ms: int | None = None,
          time_budget: float | None = None, now: datetime | None = None) -> Report:  # fmt: skip
    """Delete (or count, dry) what the rules say goes; stop early after `time_budget` seconds. Logs a summary."""
    batch_size = batch_size or settings.EXECUTOR_RETENTION_BATCH_SIZE
    pause = (settings.EXECUTOR_RETENTION_PAUSE_MS if pause_ms is None else pause_ms) / 1000
    started = time.monotonic()
    report = Report(dry_run=dry_run)
    report.related.update(dict.fromkeys([*_cascaded_labels(), EVENTS], 0))  # the same keys in every report
    run_plan = plan(now)

    def out_of_time() -> bool:
        return time_budget is not None and time.monotonic() - started > time_budget

    for selection in run_plan.selections:
        for ids in _pages(candidates(selection, run_plan.kept_ids), "created_at", batch_size):
            deleted, related = _count_batch(ids) if dry_run else _delete_batch(ids)
            report.executions[(selection.package_name, selection.reason)] += deleted
            report.related.update(related)
            if _after_batch(report, dry_run, pause, out_of_time):
                return _finish(report, started)
    old_events = TriggerEvent.objects.filter(received_at__lt=run_plan.events_before)
    for ids in _pages(old_events, "received_at", batch_size):
        report.related[EVENTS] += _count_events(ids, run_plan) if dry_run else _delete_events(ids)
        if _after_batch(report, dry_run, pause, out_of_time):
            return _finish(report, started)
    return _finish(report, started, finished=True)


def _after_batch(report: Report, dry_run: bool, pause: float, out_of_time) -> bool:
    """Count the batch, give PostgreSQL's other sessions a moment; True when the time budget is spent."""
    report.batches += 1
    if not dry_run and pause:
        time.sleep(pause)
    return out_of_time()


def _finish(report: Report, started: float, *, finished: bool = False) -> Report:
    report.seconds = time.monotonic() - started
    report.finished = finished
    totals = report.totals()
    if report.dry_run or any(totals.values()):
        logger.info(
            "retention%s: %s %s in %d batches, %.1f s%s",
            " (dry run)" if report.dry_run else "", "would delete" if report.dry_run else "deleted",
            ", ".join(f"{count} {what}" for what, count in totals.items()), report.batches, report.seconds,
            "" if finished else "; stopped at the time budget, the next run goes on",
        )  # fmt: skip
    return report


def _pages(queryset: models.QuerySet, time_field: str, size: int) -> Iterator[list]:
    """The ids of `queryset` in (time_field, pk) order, `size` at a time. Each page starts after the previous page's
    last row (keyset), so a page never walks over rows an earlier page deleted (dead index entries until vacuum)."""
    after = None
    while True:
        page = queryset
        if after is not None:
            moment, pk = after
            page = page.filter(**{f"{time_field}__gte": moment}).filter(
                Q(**{f"{time_field}__gt": moment}) | Q(pk__gt=pk)
            )
        rows = list(page.order_by(time_field, "pk").values_list("pk", time_field)[:size])
        if not rows:
            return
        yield [pk for pk, _ in rows]
        if len(rows) < size:
            return
        after = rows[-1][1], rows[-1][0]


def _delete_batch(ids: list) -> tuple[int, Counter]:
    """Delete these executions and what belongs to them, in one short transaction; (executions, related rows)."""
    related = Counter()
    with transaction.atomic():
        # Checked again under a row lock: a run someone marked Saved since it was read is kept; rows another
        # transaction holds are skipped (the next run takes them) instead of waited for.
        locked = list(
            Execution.objects.filter(pk__in=ids, saved=False, status__in=TERMINAL_EXECUTION_STATUSES)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        if not locked:
            return 0, related
        for relation in Execution._meta.related_objects:
            related.update(_follow(relation, locked))
        # The beat task a saved run leaves when it is unsaved (executions/saved_runs.py deletes it on post_delete,
        # which a bulk delete does not send).
        PeriodicTask.objects.filter(name__in=[saved_runs.periodic_task_name(pk) for pk in locked]).delete()
        # The rows that pointed here are handled above; a collector's delete would load every execution and send
        # a post_delete per row (one more query each) for the same result.
        deleted = Execution.objects.filter(pk__in=locked)._raw_delete(Execution.objects.db)
    return deleted, related


def _follow(relation, ids: list) -> Counter:
    """Apply one foreign key's on_delete to the rows pointing at `ids`; rows deleted, by model label."""
    rows = relation.related_model._base_manager.filter(**{f"{relation.field.name}__in": ids})
    on_delete = relation.field.remote_field.on_delete
    if on_delete is models.CASCADE:
        return Counter(rows.delete()[1])
    if on_delete is models.SET_NULL:
        rows.update(**{relation.field.name: None})
        return Counter()
    if on_delete is models.DO_NOTHING:
        return Counter()
    # PROTECT, RESTRICT, SET_DEFAULT...: a new table whose rows must outlive their execution needs a decision here.
    raise ImproperlyConfigured(f"retention: {relation.related_model._meta.label}.{relation.field.name} is neither "
                               "CASCADE, SET_NULL nor DO_NOTHING; decide what retention does with it")  # fmt: skip


def _cascaded_labels() -> list[str]:
    return [r.related_model._meta.label for r in Execution._meta.related_objects if r.on_delete is models.CASCADE]


def _count_batch(ids: list) -> tuple[int, Counter]:
    """The dry run's twin of `_delete_batch`: the same rows, counted."""
    related = Counter()
    for relation in Execution._meta.related_objects:
        if relation.field.remote_field.on_delete is models.CASCADE:
            rows = relation.related_model._base_manager.filter(**{f"{relation.field.name}__in": ids})
            related[relation.related_model._meta.label] += rows.count()
    return len(ids), related


def _delete_events(ids: list) -> int:
    """Delete the events among `ids` that no execution refers to any more (checked in the DELETE itself)."""
    started_runs = Execution.objects.filter(trigger_event=OuterRef("pk"))
    orphans = TriggerEvent.objects.filter(pk__in=ids, parent_execution__isnull=True).exclude(Exists(started_runs))
    with transaction.atomic():
        return orphans.delete()[1].get(TriggerEvent._meta.label, 0)


def _count_events(ids: list, run_plan: Plan) -> int:
    """The dry run's twin of `_delete_events`: events whose sender and started runs all would be deleted (or never
    existed), as they would be once the executions are gone."""
    events = list(TriggerEvent.objects.filter(pk__in=ids).values_list("pk", "parent_execution_id"))
    runs = Execution.objects.filter(Q(trigger_event_id__in=ids) | Q(pk__in=[s for _, s in events if s]))
    kept = [row for row in _rows(runs) if not run_plan.would_prune(row)]
    kept_ids = {row.pk for row in kept}
    kept_events = {row.trigger_event_id for row in kept}
    return sum(1 for pk, sender in events if pk not in kept_events and sender not in kept_ids)


def _rows(executions: models.QuerySet) -> Iterator[ExecutionRow]:
    for values in executions.values_list(*ROW_FIELDS):
        yield ExecutionRow(*values)
