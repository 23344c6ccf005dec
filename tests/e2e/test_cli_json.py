"""`manage.py run_package --wait --json` on a real worker, as a shell pipes it into jq: stdout is one JSON document
(the finished execution with its steps' output), the id and every other message on stderr."""

import json
import subprocess
import sys

import pytest

from tests.e2e.processes import BASE_DIR, environment_for_tests
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_run_package_wait_json_prints_one_json_document_on_stdout(celery_worker):
    make_package("uma_json", {"main.py": "import sys; print('hello'); print('careful', file=sys.stderr)"})

    result = subprocess.run([sys.executable, "manage.py", "run_package", "uma_json", "--param", "n=3", "--wait",
                             "--json", "--timeout", "60"], cwd=BASE_DIR, env=environment_for_tests(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)  # the whole of stdout: nothing before or after the document
    assert (document["status"], document["data"]) == ("completed", {"n": 3})
    assert [(step["script"], step["stdout"], step["stderr"]) for step in document["steps"]] == [
        ("main.py", "hello\n", "careful\n")
    ]
    assert document["execution_id"] in result.stderr.splitlines()
