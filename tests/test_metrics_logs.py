"""One log line per execution state change (executions/state_log.py), plain or JSON (LOG_FORMAT=json,
executor_project/log_format.py): the JSON lines are checked in a separate process configured by the real settings,
as gunicorn or a worker would be."""

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from django.conf import settings

from executions.models import TriggerType
from executions.services import trigger_execution
from executor_project.log_format import JsonFormatter, apply_to
from packages.models import Project
from tests.e2e.processes import database_url_for_tests
from tests.factories import make_package

CLAIM = "from executions import transitions; transitions.claim({id!r}, 'worker@logs', 'token')"


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with Django set up from the real settings, against the test database."""
    environment = {**os.environ, "DATABASE_URL": database_url_for_tests(), **env}
    return subprocess.run([sys.executable, "-c", f"import django; django.setup()\n{code}"], env=environment,
                          cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def pending_run(transactional_db, no_broker):
    package = make_package("ursula_logs", {"a.py": ""}, project=Project.objects.create(name="Finance"))
    return trigger_execution(package, trigger_type=TriggerType.MANUAL)


def test_with_log_format_json_a_claim_is_one_json_line_to_join_with_the_admin(pending_run):
    done = run_django(CLAIM.format(id=str(pending_run.id)), LOG_FORMAT="json")

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    [line] = [line for line in lines if line["logger"] == "executions.state_log"]
    assert line["level"] == "INFO"
    assert datetime.fromisoformat(line["time"]).tzinfo == UTC
    assert {key: line[key] for key in ("execution_id", "package", "project", "cid", "trigger_type", "transition",
                                       "from_status", "to_status", "worker")} == {  # fmt: skip
        "execution_id": str(pending_run.id), "package": "ursula_logs", "project": "Finance",
        "cid": pending_run.correlation_id, "trigger_type": "manual", "transition": "claim",
        "from_status": "pending", "to_status": "in_progress", "worker": "worker@logs",
    }  # fmt: skip
    assert line["message"].startswith(f"execution {pending_run.id} pending -> in_progress (claim)")


@pytest.mark.django_db
def test_by_default_the_line_is_plain_text_with_the_same_facts(no_broker, caplog, django_capture_on_commit_callbacks):
    from executions import transitions

    package = make_package("ursula_logs", {"a.py": ""}, project=Project.objects.create(name="Finance"))
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    caplog.set_level(logging.INFO, logger="executions.state_log")
    with django_capture_on_commit_callbacks(execute=True):
        transitions.claim(execution.id, "worker@logs", "token")

    plain = logging.Formatter(settings.LOGGING["formatters"][settings.LOG_FORMAT]["format"])
    [line] = [plain.format(record) for record in caplog.records if record.name == "executions.state_log"]
    assert settings.LOG_FORMAT == "plain"
    facts = f"package=ursula_logs project=Finance cid={execution.correlation_id} trigger=manual"
    assert line.endswith(f"INFO executions.state_log: execution {execution.id} pending -> in_progress (claim) {facts}")


def test_an_unknown_log_format_stops_the_process_with_a_clear_error():
    done = run_django("", LOG_FORMAT="xml")

    assert done.returncode != 0
    assert "LOG_FORMAT must be plain or json, not 'xml'" in done.stderr


@pytest.mark.django_db
def test_the_state_lines_follow_a_run_from_creation_to_its_end(no_broker, caplog, django_capture_on_commit_callbacks):
    from executions import transitions

    caplog.set_level(logging.INFO, logger="executions.state_log")
    with django_capture_on_commit_callbacks(execute=True):
        execution = trigger_execution(make_package("victor_logs", {"a.py": ""}), trigger_type=TriggerType.MANUAL)
        transitions.claim(execution.id, "worker@logs", "token")
        transitions.fail_unfinished(execution.id, "token", "failed: internal error in the worker (KeyError)")

    records = [record for record in caplog.records if record.name == "executions.state_log"]
    assert [(r.transition, r.from_status, r.to_status, r.levelname) for r in records] == [
        ("create", "", "pending", "INFO"),
        ("claim", "pending", "in_progress", "INFO"),
        ("fail_unfinished", "in_progress", "failed", "WARNING"),
    ]
    assert {(r.execution_id, r.package, r.project, r.cid) for r in records} == {
        (str(execution.id), "victor_logs", "", execution.correlation_id)
    }
    assert records[-1].reason == "failed: internal error in the worker (KeyError)"


def test_the_json_formatter_writes_extras_tracebacks_and_any_value():
    try:
        raise ValueError("boom")
    except ValueError:
        when = datetime(2026, 1, 2, tzinfo=UTC)
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                                   sys.exc_info(), extra={"when": when})  # fmt: skip

    line = json.loads(JsonFormatter().format(record))

    assert (line["message"], line["level"], line["when"]) == ("failed x", "ERROR", "2026-01-02 00:00:00+00:00")
    assert line["exception"].endswith("ValueError: boom")
    assert "args" not in line and "msg" not in line


def test_celerys_own_handlers_get_the_json_formatter_only_with_log_format_json():
    logger = logging.getLogger("tests.celery_like")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        apply_to(logger, "plain")
        assert not isinstance(handler.formatter, JsonFormatter)
        apply_to(logger, "json")
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        logger.removeHandler(handler)
