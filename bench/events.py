"""Event load benchmark: `make bench-events` (flags through BENCH_ARGS="--rate 100 --duration 20").

Starts its own stack on this machine: a throw-away PostgreSQL database (`executor_bench_events`, on DATABASE_URL's
server, default the local one), Redis db 13 (BENCH_REDIS_URL; flushed), gunicorn with 3 workers (docker-compose's
command; --web-workers) and one `celery worker` with 2 slots (--slots). Two packages subscribe to one event type,
each with one trivial step that reports its execution id to a counter in this process (outside the sandbox and
the stack: a step that ran twice reports twice). Then it sends `rate` x `duration` events, each at its own time
whatever the answers take (an open loop, as independent clients do), and prints:

  accepted / errored   202 answers; anything else, by status (or the transport error)
  request time         p50 / p99 / max, from the request's connect to its last byte
  sustained            events accepted per second over the sending window
  drain                from the last answer until every execution the events started had finished
  lost / duplicated    executions named in a 202 that never finished (within --drain-timeout); steps that ran more
                       than once, as the counter saw them
  CPU                  seconds each part of the stack used while the events were sent, to show where the time goes

With --url it targets a running stack instead (gunicorn and workers not started): DATABASE_URL must then be that
stack's database, where the benchmark creates its two packages and an API key (it recreates nothing there). That
stack's EXECUTOR_API_RATE_LIMIT applies to the key (6000 requests a minute by default); the stack the benchmark
starts itself has none.

Target (issue 15): >= 100 events/s sustained with p99 < 250 ms, 0 errors, 0 lost, 0 duplicated.
"""

import argparse
import http.client
import json
import os
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
EVENT_TYPE = "bench.events"
PACKAGES = ("bench_events_a", "bench_events_b")
WINDOW_SECONDS = 10
sys.path.insert(0, str(BASE_DIR))

# The step: tell the counter which execution ran, then end. Network access is on for the packages so it can.
STEP = """\
import json, socket, sys
execution_id = json.loads(sys.argv[1])["execution_id"]
with socket.create_connection(("127.0.0.1", {port}), timeout=30) as counter:
    counter.sendall(execution_id.encode() + b"\\n")
    counter.recv(4)
"""


def main() -> None:
    options = _options()
    from bench.databases import SERVER, on_server, use_bench_environment

    server = SERVER if options.url else on_server("executor_bench_events")
    # The stack it starts measures capacity, so its key is not rate-limited (EXECUTOR_API_RATE_LIMIT off).
    use_bench_environment(server, REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
                          EXECUTOR_API_RATE_LIMIT="off")  # fmt: skip
    if not options.url:
        from bench.databases import recreate_database

        recreate_database(server, "executor_bench_events")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    counter = RunCounter()
    key = _prepare(counter.port, flush_redis=not options.url)
    if options.url:
        report(options, options.url, key, counter, web=None)
        return
    with gunicorn(options.web_workers) as (url, web):
        with worker(options.slots, options.worker_nice) as celery:
            executions = report(options, url, key, counter, web=web)
        print(f"worker and its steps: {celery.cpu_seconds:.1f} CPU-seconds for {executions} executions "
              f"({celery.cpu_seconds / max(executions, 1) * 1000:.0f} ms each, its start-up included)")  # fmt: skip


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100, help="events per second (default 100)")
    parser.add_argument("--duration", type=float, default=20, help="seconds of sending (default 20)")
    parser.add_argument("--url", help="a running stack's base URL (DATABASE_URL its database); nothing is started")
    parser.add_argument("--web-workers", type=int, default=3, help="gunicorn workers (default 3, as docker-compose)")
    parser.add_argument("--slots", type=int, default=2, help="the celery worker's slots (default 2)")
    parser.add_argument("--worker-nice", type=int, default=19, help="the worker's niceness (default 19, as make run)")
    parser.add_argument("--threads", type=int, default=64, help="client threads (default 64)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=900,
        help="seconds to wait for the runs (default 900; 0: no wait, no lost count)",
    )
    return parser.parse_args()


def _prepare(counter_port: int, *, flush_redis: bool) -> str:
    """The two subscribed packages (each run: one step that reports to the counter) and an API key."""
    import redis
    from django.conf import settings

    from executions.models import ApiKey
    from packages.models import EventType, Package, Script

    if flush_redis:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    event_type, _ = EventType.objects.get_or_create(name=EVENT_TYPE)
    for name in PACKAGES:
        package, _ = Package.objects.update_or_create(package_name=name, defaults={"name": name, "active": True,
                                                                                  "network_access": True})  # fmt: skip
        Script.objects.update_or_create(package=package, file_name="main.py",
                                        defaults={"content": STEP.format(port=counter_port).encode()})  # fmt: skip
        package.trigger_event_types.add(event_type)
    return ApiKey.issue("bench-events", scopes=["events:send"])[1]


class RunCounter:
    """A TCP server in this process: each step sends its execution id once (see STEP)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        lock, runs = threading.Lock(), self.runs

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                execution_id = self.rfile.readline().decode(errors="replace").strip()
                with lock:
                    runs[execution_id] += 1
                self.wfile.write(b"ok\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class gunicorn:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> tuple[str, subprocess.Popen]:
        port = _free_port()
        argv = [sys.executable, "-m", "gunicorn", "executor_project.wsgi", "--bind", f"127.0.0.1:{port}",
                "--workers", str(self.workers), "--timeout", "60"]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _get(url + "/healthz") != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("gunicorn did not start")
            time.sleep(0.2)
        return url, self.proc

    def __exit__(self, *exc) -> None:
        _stop(self.proc)


class worker:
    """A celery worker at `niceness` (its pool and the steps inherit it). `cpu_seconds` after the block: what it and
    every process it started used, counted when this process reaps it (the children's times add up at each reap)."""

    def __init__(self, slots: int, niceness: int) -> None:
        self.slots, self.niceness = slots, niceness
        self.cpu_seconds = 0.0

    def __enter__(self) -> "worker":
        argv = [sys.executable, "-m", "celery", "--app", "executor_project", "worker", "--loglevel", "WARNING",
                "--queues", "priority,default,slow,scheduled,maintenance", "--concurrency", str(self.slots),
                "--without-mingle", "--without-gossip", "--hostname", "bench-events@%h"]  # fmt: skip
        self.reaped_before = _reaped_cpu()
        self.proc = subprocess.Popen(argv, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.niceness)
        time.sleep(6)  # start-up and the sandbox self-test
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.proc)
        self.cpu_seconds = _reaped_cpu() - self.reaped_before


def _reaped_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


@dataclass
class Answer:
    status: int | str  # the HTTP status, or the transport error's name
    seconds: float
    execution_ids: list[str]
    sent: float = 0.0  # when it was due, in seconds from the first send


def send_events(url: str, key: str, rate: float, duration: float, threads: int) -> tuple[list[Answer], float, float]:
    """rate x duration events, each started at its own time; the answers, and when the first and last were sent."""
    target = urlsplit(url)
    count = round(rate * duration)
    started = time.monotonic() + 0.5

    def send(n: int) -> Answer:
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        body = json.dumps({"event_type": EVENT_TYPE, "event_source": "bench", "payload": {"n": n}})
        headers = {"Content-Type": "application/json", "X-API-KEY": key}
        began = time.perf_counter()
        try:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connection.request("POST", "/fx/events", body, headers)
            response = connection.getresponse()
            text = response.read()
            connection.close()
        except OSError as exc:
            return Answer(type(exc).__name__, time.perf_counter() - began, [], n / rate)
        seconds = time.perf_counter() - began
        ids = json.loads(text).get("executions", []) if response.status == 202 else []
        return Answer(response.status, seconds, ids, n / rate)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(send, range(count)))
    return answers, started, time.monotonic()


def report(options, url: str, key: str, counter: RunCounter, web: subprocess.Popen | None) -> int:
    """Send the events, wait for their executions, print what happened; returns how many executions they started."""
    started_here = f"; gunicorn x {options.web_workers}, worker {options.slots} slots at niceness " \
                   f"{options.worker_nice}" if web else ""  # fmt: skip
    print(f"{options.rate:g} events/s for {options.duration:g} s against {url} ({len(PACKAGES)} subscribers, "
          f"trivial steps{started_here})", flush=True)  # fmt: skip
    cpu_before = _cpu(web)
    with ConnectionPeak() as connections:
        answers, started, ended = send_events(url, key, options.rate, options.duration, options.threads)
    cpu_after = _cpu(web)
    busy = cpu_after.pop("machine busy")
    cpu_used = {name: seconds - cpu_before[name] for name, seconds in cpu_after.items()}
    accepted = [answer for answer in answers if answer.status == 202]
    errored = Counter(str(answer.status) for answer in answers if answer.status != 202)
    times = sorted(answer.seconds for answer in answers)
    p50, p99 = statistics.median(times), _p99(times)
    window = ended - started
    print(f"sent {len(answers)} in {window:.1f} s: accepted {len(accepted)}, errored {sum(errored.values())}"
          f"{' ' + repr(dict(errored)) if errored else ''}")  # fmt: skip
    print(f"request time: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
    print(f"p99 of each {WINDOW_SECONDS} s sent: {_p99_by_window(answers)} ms")
    print(f"sustained: {len(accepted) / window:.1f} events/s accepted [target >= 100 events/s, p99 < 250 ms, "
          "0 errors]")  # fmt: skip
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu_used.items())
    per_request = f"; web {cpu_used['web'] / len(answers) * 1000:.1f} ms per request" if web else ""
    print(f"CPU while sending ({window:.1f} s x {os.cpu_count()} cores, {busy:.0%} busy): {parts}{per_request}")
    print(f"database connections while sending: at most {connections.peak} (this benchmark's own included)")
    ids = {execution_id for answer in accepted for execution_id in answer.execution_ids}
    if not options.drain_timeout:  # the request figures alone: minutes sooner on a busy machine
        print(f"executions: {len(ids)} started; not drained (--drain-timeout 0): lost and duplicated not checked")
        return len(ids)
    drain, unfinished = _drain(ids, options.drain_timeout)
    ran = {execution_id: runs for execution_id, runs in counter.runs.items() if execution_id in ids}
    duplicated = sum(1 for runs in ran.values() if runs > 1)
    print(f"executions: {len(ids)} started; drain {drain:.1f} s after the last answer "
          f"({len(ids) / (drain + window):.1f} executions/s overall); {_statuses(ids)}")  # fmt: skip
    print(f"lost: {len(unfinished)} (never finished within {options.drain_timeout:g} s); duplicated steps: "
          f"{duplicated}; steps never reported: {len(ids) - len(ran)}")  # fmt: skip
    return len(ids)


def _p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[max(0, round(len(ordered) * 0.99) - 1)]


def _p99_by_window(answers: list[Answer]) -> str:
    """Whether the tail grows as the backlog does, or comes from one moment."""
    windows: dict[int, list[float]] = {}
    for answer in answers:
        windows.setdefault(int(answer.sent // WINDOW_SECONDS), []).append(answer.seconds)
    return ", ".join(f"{_p99(windows[n]) * 1000:.0f}" for n in sorted(windows))


class ConnectionPeak(threading.Thread):
    """The most connections to the benchmark's database at once, sampled every 0.2 s (the budget in settings.py)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def __enter__(self) -> "ConnectionPeak":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()

    def run(self) -> None:
        from django.db import connection

        while not self.done.wait(0.2):
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                self.peak = max(self.peak, cursor.fetchone()[0])
        connection.close()  # this thread's own


def _drain(ids: set[str], timeout: float) -> tuple[float, set[str]]:
    """Seconds until every execution in `ids` is finished, and those still unfinished after `timeout`."""
    from executions.models import TERMINAL_EXECUTION_STATUSES, Execution

    began = time.monotonic()
    unfinished = set(ids)
    while unfinished and time.monotonic() - began < timeout:
        done = Execution.objects.filter(pk__in=list(unfinished), status__in=TERMINAL_EXECUTION_STATUSES)
        unfinished -= {str(pk) for pk in done.values_list("pk", flat=True)}
        if unfinished:
            time.sleep(0.5)
    return time.monotonic() - began, unfinished


def _statuses(ids: set[str]) -> str:
    from django.db.models import Count

    from executions.models import Execution

    rows = Execution.objects.filter(pk__in=list(ids)).values("status").annotate(n=Count("pk")).order_by("status")
    return ", ".join(f"{row['status']} {row['n']}" for row in rows)


def _cpu(web: subprocess.Popen | None) -> dict[str, float]:
    """CPU seconds so far: the web's processes, PostgreSQL's and Redis' (every one on this machine, other users'
    included), this client, and the machine as a whole (as a fraction of all cores, over the last call)."""
    import psutil

    used = {}
    if web is not None:
        master = psutil.Process(web.pid)
        used["web"] = sum(_seconds(process) for process in [master, *master.children()])
    for name, program in (("postgres", "postgres"), ("redis", "redis-server")):
        used[name] = sum(_seconds(p) for p in psutil.process_iter(["name"]) if p.info["name"] == program)
    times = os.times()
    used["bench client"] = times.user + times.system
    used["machine busy"] = psutil.cpu_percent() / 100  # since the previous call: the sending window
    return used


def _seconds(process) -> float:
    import psutil

    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
