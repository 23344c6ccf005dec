"""Counting step runs from outside the sandbox and outside the stack under test.

A step cannot write anywhere the test can read (its sandbox hides the host), and the fault suite wipes, fills and
stops Redis and PostgreSQL on purpose, so neither can hold the count. The test process runs a small TCP server
instead; every step of the suite's packages (network access on) tells it "<execution id> start" before its work
and "<execution id> end" after. A step that ran twice says "start" twice.
"""

import json
import socketserver
import threading
from collections import Counter
from pathlib import Path

from tests.e2e.processes import wait_until

# The one script of every fault-suite package: tell the counter, sleep `seconds` (from the event's data), tell it
# again. The counter's port is filled in when the packages are created (tests/faults/seed.py).
STEP_SCRIPT = """\
import json, socket, sys, time
args = json.loads(sys.argv[1])
def tell(what):
    with socket.create_connection(("127.0.0.1", {port}), timeout=10) as counter:
        counter.sendall(f"{{args['execution_id']}} {{what}}\\n".encode())
        counter.recv(8)
tell("start")
time.sleep(float(args.get("seconds", 0)))
tell("end")
print("slept", args.get("seconds", 0))
"""


class RunCounter:
    """A TCP server in the test process recording each step's start and end marks, also appended to a file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.marks: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        counter = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode(errors="replace").split()
                if len(line) == 2:
                    counter._record(line[0], line[1])
                self.wfile.write(b"ok\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="run-counter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def step_script(self) -> str:
        return STEP_SCRIPT.format(port=self.port)

    def starts(self, execution_id: str) -> int:
        with self._lock:
            return self.marks[(execution_id, "start")]

    def wait_started(self, execution_id: str, timeout: float = 30) -> None:
        """Until the execution's step has said "start": a test that kills a step mid-run waits for this, since the
        execution is marked running a moment before its step's process starts."""
        wait_until(lambda: self.starts(execution_id), timeout, lambda: f"the step of {execution_id} never started")

    def ends(self, execution_id: str) -> int:
        with self._lock:
            return self.marks[(execution_id, "end")]

    def _record(self, execution_id: str, what: str) -> None:
        with self._lock:
            self.marks[(execution_id, what)] += 1
            with open(self.log_path, "a") as log:
                log.write(json.dumps([execution_id, what]) + "\n")
