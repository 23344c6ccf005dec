"""Events leave as a step sends them (workers/fx_events.py): the worker follows the step's events outbox, by offset
and without following links, and every event is dispatched once, whatever the step does to the file."""

import json
import os

import pytest
from django.db import connection

from executions.models import Execution, TriggerEvent, TriggerType
from executions.services import trigger_execution
from executor_lib.safe_files import UnsafeFile, open_directory
from packages.models import EventType
from tests.factories import make_package
from tests.workers.test_database_blink import Blink
from workers import fx_bridge
from workers import lease as lease_module
from workers.fx_events import OutboxLines, StepEvents
from workers.lease import ExecutionWatch, claim
from workers.workspace import create_workspace


def line(n: int, event_type: str = "live.tick") -> bytes:
    event = {"specversion": "1.0", "id": f"event-{n}", "source": "sender", "type": event_type, "data": "{}"}
    return json.dumps({"topic": "ferris.events", "event": event}).encode() + b"\n"


@pytest.fixture
def outbox(tmp_path):
    path = tmp_path / "outbox"
    path.mkdir()
    return path


def read(lines: OutboxLines, outbox) -> list[bytes]:
    with open_directory(str(outbox)) as fd:
        return lines.read(fd)


def append(outbox, data: bytes, name: str = "events.jsonl") -> None:
    with open(outbox / name, "ab") as handle:
        handle.write(data)


class TestOutboxLines:
    """No database: the reader alone."""

    def test_a_line_is_read_once_and_only_when_its_newline_is_there(self, outbox):
        lines = OutboxLines("events.jsonl", max_bytes=1 << 20)
        assert read(lines, outbox) == []  # no file yet
        append(outbox, line(1) + line(2)[:10])
        assert read(lines, outbox) == [line(1).rstrip(b"\n")]
        append(outbox, line(2)[10:] + line(3)[:5])
        assert read(lines, outbox) == [line(2).rstrip(b"\n")]
        assert read(lines, outbox) == []  # nothing new: nothing again
        lines.finish()  # the step ended in the middle of the third line
        assert lines.notes == [
            "the last line of events.jsonl had no newline (the step ended while writing it): not sent."
        ]

    def test_nothing_changed_costs_a_stat_and_a_change_is_seen(self, outbox):
        lines = OutboxLines("events.jsonl", max_bytes=1 << 20)
        append(outbox, line(1))
        with open_directory(str(outbox)) as fd:
            assert lines.changed(fd)
            lines.read(fd)
            assert not lines.changed(fd)
            append(outbox, line(2))
            assert lines.changed(fd)

    def test_a_truncated_or_replaced_file_sends_nothing_again_and_does_not_break_the_reader(self, outbox):
        lines = OutboxLines("events.jsonl", max_bytes=1 << 20)
        append(outbox, line(1) + line(2))
        assert len(read(lines, outbox)) == 2
        (outbox / "events.jsonl").write_bytes(line(1))  # truncated, the first event written again
        assert read(lines, outbox) == []
        (outbox / "events.jsonl").unlink()
        append(outbox, line(1) + line(2) + line(3) + line(4))  # a new file, longer than what was read
        # Read on from the offset reached: the first two lines of the new file are never read, so never sent.
        assert read(lines, outbox) == [line(3).rstrip(b"\n"), line(4).rstrip(b"\n")]
        read_before = len(line(1) + line(2))
        assert lines.notes == [f"the step truncated or replaced events.jsonl after {read_before} bytes of it had been "
                               "read: what the new file holds before that byte was not read."]  # fmt: skip

    def test_a_link_swapped_in_is_never_followed(self, outbox, tmp_path):
        secret = tmp_path / "root-only"
        secret.write_bytes(line(9) * 3)
        lines = OutboxLines("events.jsonl", max_bytes=1 << 20)
        append(outbox, line(1))
        assert len(read(lines, outbox)) == 1
        os.rename(outbox / "events.jsonl", outbox / "old")
        os.symlink(secret, outbox / "events.jsonl")
        with pytest.raises(UnsafeFile, match="events.jsonl is not a regular file"):
            read(lines, outbox)
        os.unlink(outbox / "events.jsonl")
        os.mkfifo(outbox / "events.jsonl")  # would block a reader that opened it without O_NONBLOCK
        with pytest.raises(UnsafeFile, match="events.jsonl is not a regular file"):
            read(lines, outbox)

    def test_only_the_first_max_bytes_are_read(self, outbox):
        lines = OutboxLines("events.jsonl", max_bytes=len(line(1)) * 2 + 5)
        append(outbox, line(1) + line(2) + line(3))
        assert read(lines, outbox) == [line(1).rstrip(b"\n"), line(2).rstrip(b"\n")]
        append(outbox, line(4))
        assert read(lines, outbox) == []
        lines.finish()
        assert lines.notes[0].startswith(f"events.jsonl is {len(line(1)) * 4} bytes, over the limit of ")


@pytest.fixture
def sender(tmp_path):
    """A claimed execution with its FX files, and a package subscribed to live.tick."""
    listener = make_package("live_listener", {"main.py": "print(1)"})
    listener.trigger_event_types.add(EventType.objects.create(name="live.tick"))
    execution = trigger_execution(make_package("live_sender", {"main.py": "print(1)"}), trigger_type=TriggerType.MANUAL)
    (tmp_path / "run").mkdir()
    workspace = create_workspace(tmp_path / "run", {})
    fx_bridge.prepare(workspace, execution.package.package_name, b"{}")
    watch = ExecutionWatch(claim(str(execution.id), "test-worker"))
    return Execution.objects.select_related("package").get(pk=execution.pk), workspace, watch


def started_by(execution: Execution) -> list[str]:
    """The ids of the events `execution` sent, each once per subscriber execution it started."""
    return list(Execution.objects.filter(parent_execution=execution).order_by("created_at")
                .values_list("trigger_event__event_id", flat=True))  # fmt: skip


@pytest.mark.django_db
@pytest.mark.usefixtures("enqueued")
class TestStepEvents:
    def test_events_leave_on_the_next_tick_and_the_end_sends_only_the_rest(self, sender, django_assert_num_queries):
        execution, workspace, watch = sender
        events = fx_bridge.step_events(workspace, execution, watch)
        outbox = workspace.fx_dir / "outbox"
        append(outbox, line(1) + line(2)[:7])
        events.tick()
        assert started_by(execution) == ["event-1"]
        with django_assert_num_queries(0):
            events.tick()  # nothing new: one stat, no query
        append(outbox, line(2)[7:] + line(3))

        collected = fx_bridge.collect(workspace, execution, {}, events)

        assert collected.notes == []
        assert started_by(execution) == ["event-1", "event-2", "event-3"]
        assert TriggerEvent.objects.count() == 3
        assert list(outbox.iterdir()) == []

    def test_at_most_max_records_over_the_ticks_and_the_end_together(self, sender):
        execution, workspace, watch = sender
        events = StepEvents(workspace, execution, watch, max_records=3, max_bytes=1 << 20)
        append(workspace.fx_dir / "outbox", line(1) + line(2))
        events.tick()
        append(workspace.fx_dir / "outbox", b"not json\n[]\n" + line(3) + line(4) + line(5))

        notes = fx_bridge.collect(workspace, execution, {}, events).notes

        assert started_by(execution) == ["event-1", "event-2", "event-3"]
        assert notes == ["2 of 5 events ignored: at most 3 per step."]

    def test_a_link_for_the_outbox_file_is_skipped_while_the_step_runs_and_told_after_it(self, sender, tmp_path):
        execution, workspace, watch = sender
        planted = tmp_path / "planted"
        planted.write_bytes(line(1))
        (workspace.fx_dir / "outbox" / "events.jsonl").symlink_to(planted)
        events = fx_bridge.step_events(workspace, execution, watch)
        events.tick()

        notes = fx_bridge.collect(workspace, execution, {}, events).notes

        assert started_by(execution) == []
        assert notes == ["events not read: events.jsonl is not a regular file (Too many levels of symbolic links)."]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("enqueued")
def test_a_database_blink_while_dispatching_leaves_the_event_for_the_next_tick(sender, monkeypatch):
    monkeypatch.setattr(lease_module, "CANCEL_POLL_SECONDS", 0.0)
    execution, workspace, watch = sender
    events = fx_bridge.step_events(workspace, execution, watch)
    append(workspace.fx_dir / "outbox", line(1) + line(2))
    with connection.execute_wrapper(Blink(down=True)):
        events.tick()  # never raises: the step goes on
    assert watch.database_down and not watch.stop.is_set()
    events.tick()  # the database is back, but until the watch has seen it the events wait
    assert started_by(execution) == []

    watch.tick()
    events.tick()

    assert not watch.database_down
    assert started_by(execution) == ["event-1", "event-2"]
    assert fx_bridge.collect(workspace, execution, {}, events).notes == []
    assert started_by(execution) == ["event-1", "event-2"]
