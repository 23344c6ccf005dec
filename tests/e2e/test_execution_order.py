"""A package imported with manifest.json's execution_order runs only the listed scripts on a real worker, while its
other files are still there beside them (packages/importer.py: support files)."""

import json

import pytest

from executions.models import ExecutionStatus, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.importer import import_package_files

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

APP = """
import helpers
print(helpers.GREETING, open("lookup.csv").read().strip())
"""


def test_only_the_listed_script_runs_and_an_unlisted_module_is_importable(celery_worker):
    files = {"manifest.json": json.dumps({"execution_order": ["app.py"]}), "__init__.py": "",
             "helpers.py": "GREETING = 'hello from helpers'", "lookup.csv": "eu,us\n", "app.py": APP}  # fmt: skip
    package = import_package_files("fx_listed", {name: text.encode() for name, text in files.items()}).package

    execution = wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL), timeout=60)

    steps = list(execution.steps.order_by("position"))
    assert [(step.file_name, step.status) for step in steps] == [("app.py", "completed")], steps[0].stderr
    assert steps[0].stdout == "hello from helpers eu,us\n"
    assert execution.status == ExecutionStatus.COMPLETED
