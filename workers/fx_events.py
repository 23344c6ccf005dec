"""The events a step sends, dispatched as it sends them, as on FX: a subscriber starts while the long step that sent
its event still runs.

The script side (workers/runtime/site/executor_fx, OutboxProducer) appends each event to <fx>/outbox/events.jsonl
as one line ending in a newline. While the step runs, every tick of its watch (about every 0.1 s) stats the file;
only when it changed are the lines completed since the last read read, by offset, and dispatched in order with
`executions.events.dispatch` (chain depth, fan-out, reach, correlation id: the same rules as for any event). After the
step, workers/fx_bridge.py `collect` dispatches what is left the same way and empties the outbox.

Each event is dispatched once:
- a line is taken once: the offset moves past it when it is read, and a line that could not be dispatched yet stays
  queued here, so the end of the step never reads it again;
- a line is not an event until its newline is there: a step that dies in the middle of writing one leaves a
  fragment that is never sent (its stderr says so);
- a database blink while dispatching leaves the line queued for the next tick (or the end of the step, which waits
  for the database like the step's final writes). An event stored whose reply was lost is not stored twice: sent
  again, its (source, id) finds the first delivery and starts nothing new;
- the step can write in <fx>, so the file is hostile (executor_lib/safe_files.py): never read through a link, only
  a regular file, only its first MAX_OUTBOX_BYTES. A step that truncates or replaces the file gets nothing sent
  twice: reading goes on at the offset already reached, so whatever the new file holds before that offset is never
  read (its stderr says so once), and what is appended after it is.

A worker that dies mid-step leaves the events it dispatched dispatched; the run's next attempt runs the step again
(workers/reaper.py), and the events that run sends are new ones with ids of their own, as on FX when a script is
started again.
"""

import json
import logging
from collections import deque

from django.conf import settings

from executions.events import EventRejected, dispatch
from executions.models import Execution
from executor_lib.safe_files import UnsafeFile, identity, open_directory, read_regular_from
from executor_project import bounded_json, database

from .lease import ExecutionWatch
from .workspace import Workspace

logger = logging.getLogger(__name__)
EVENTS_FILE = "events.jsonl"


class OutboxLines:
    """The complete lines of a file a step appends to, each read once, by offset. No Django."""

    def __init__(self, name: str, max_bytes: int) -> None:
        self.name, self.max_bytes = name, max_bytes
        self.offset = 0  # where the first line not read yet starts
        self.partial = b""  # read after `offset`: the start of a line whose newline has not come yet
        self.seen: tuple[int, int] | None = None  # (inode, size) at the last read: unchanged, nothing is new
        self.size = 0  # the file's size at the last read
        self.notes: list[str] = []

    def changed(self, dir_fd: int) -> bool:
        """One lstat: whether the file may hold something not read yet."""
        return identity(dir_fd, self.name) != self.seen

    def read(self, dir_fd: int) -> list[bytes]:
        """The lines completed since the last read, without their newlines. UnsafeFile when the name is not a
        regular file (nothing is read then)."""
        before, self.seen = self.seen, identity(dir_fd, self.name)
        read_to = self.offset + len(self.partial)
        found = read_regular_from(dir_fd, self.name, read_to, self.max_bytes)
        if found is None:
            return []
        data, self.size = found
        if self.size < read_to or (before is not None and self.seen is not None and before[0] != self.seen[0]):
            self._note_once(f"the step truncated or replaced {self.name} after {read_to} bytes of it had been read: "
                            "what the new file holds before that byte was not read.")  # fmt: skip
        data = self.partial + data
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        self.partial = data[complete:]
        return data[:complete].split(b"\n")[:-1]

    def finish(self) -> None:
        """After the step: say what was left unread."""
        if self.size > self.max_bytes:
            self.notes.append(f"{self.name} is {self.size} bytes, over the limit of {self.max_bytes} bytes: what "
                              "the step sent after that was not read.")  # fmt: skip
        elif self.partial:
            self.notes.append(f"the last line of {self.name} had no newline (the step ended while writing it): "
                              "not sent.")  # fmt: skip

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


class StepEvents:
    """The events of one step: dispatched while it runs (`tick`), then what is left after it (`read_rest` and
    `send_rest`, from fx_bridge.collect). `notes`: what the step's stderr should say about them."""

    def __init__(self, workspace: Workspace, execution: Execution, watch: ExecutionWatch | None, *,
                 max_records: int, max_bytes: int) -> None:  # fmt: skip
        self.workspace, self.execution, self.watch = workspace, execution, watch
        self.max_records = max_records
        self.lines = OutboxLines(EVENTS_FILE, max_bytes)
        self.queue: deque[bytes] = deque()  # read, not dispatched yet (the database was away)
        self.taken = 0  # records dispatched or refused: at most max_records per step
        self.ignored = 0  # records over max_records
        self.rejected: list[str] = []

    @property
    def notes(self) -> list[str]:
        cap = []
        if self.ignored:
            cap = [f"{self.ignored} of {self.taken + self.ignored} events ignored: at most {self.max_records} per "
                   "step."]  # fmt: skip
        return [*self.lines.notes, *self.rejected, *cap]

    def tick(self) -> None:
        """Called with every tick of the step's watch, after it. Costs one lstat when nothing new came."""
        if self.watch is not None and self.watch.database_down:
            return  # the watch's next poll finds out when it is back; the lines wait, read or not
        try:
            with open_directory(str(self.workspace.root), "fx", "outbox") as outbox:
                if self.lines.changed(outbox):
                    self.queue.extend(self.lines.read(outbox))
        except UnsafeFile:
            pass  # said once, after the step, when the outbox is read for the last time
        if not self.queue:
            return
        try:
            self._send_queued()
        except database.UNREACHABLE as exc:
            if self.watch is None:
                raise
            self.watch.database_failed(exc)  # counts towards the outage that stops the step, like live output

    def read_rest(self, outbox: int) -> None:
        """After the step, in the outbox it left: the lines not read yet. UnsafeFile as in OutboxLines.read."""
        self.queue.extend(self.lines.read(outbox))
        self.lines.finish()

    def send_rest(self) -> None:
        """Dispatch what is queued, waiting out a database blink: sending an event again is harmless (its
        (source, id) is stored once), and one whose turn has passed is off the queue."""
        if self.queue:
            database.retrying(self._send_queued, seconds=settings.EXECUTOR_DATABASE_OUTAGE_SECONDS,
                              what=f"execution {self.execution.id}: events")  # fmt: skip

    def _send_queued(self) -> None:
        """In order; a line leaves the queue once dispatched (or refused), so an error leaves it first in line."""
        while self.queue:
            self._send(self.queue[0])
            self.queue.popleft()

    def _send(self, line: bytes) -> None:
        """The script wrote the line, so nothing in it is trusted."""
        try:
            record = bounded_json.loads(line)
        except bounded_json.JSONRejected:
            return
        if not isinstance(record, dict):
            return
        if self.taken >= self.max_records:
            self.ignored += 1
            return
        if isinstance(record.get("event"), dict):
            self._dispatch(record["event"])
        self.taken += 1

    def _dispatch(self, event: dict) -> None:
        # Imported when a step sent events: it loads pydantic, ~10 MiB a worker that never sees one need not carry.
        from executions.event_input import CLOUDEVENTS_JSON, parse

        event = {key: value for key, value in event.items() if key != "extensions"}
        try:
            dispatch(parse({"Content-Type": CLOUDEVENTS_JSON}, json.dumps(event).encode()), parent=self.execution)
        except EventRejected as exc:
            self.rejected.append(f"event {event.get('type')} not sent: {exc}")
