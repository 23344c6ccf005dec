"""The production settings documented in .env.example pass `manage.py check --deploy` without a warning, and do
what they say over HTTP: plain-HTTP requests go to https except the container health check, with HSTS. The quick
start (no DATABASE_URL) still works over plain HTTP.

Each case runs in a subprocess, because settings are read from the environment when they are imported.
"""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
ENV_EXAMPLE = BASE_DIR / ".env.example"
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "EXECUTOR_ADMIN_PASSWORD"}


def documented_production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """.env.example as an operator fills it in (a fresh 50+ character SECRET_KEY and a Fernet key), with the
    DATABASE_URL and REDIS_URL docker-compose builds pointing at the test servers. Nothing else from this
    process's environment."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "EXECUTOR_DATA_DIR": str(tmp_path / "data")}
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, _, value = line.partition("=")
        if line.startswith("#") or not _ or name in COMPOSE_ONLY:
            continue
        env[name] = value
    assert env["SECRET_KEY"] == "" and env["EXECUTOR_FERNET_KEYS"] == ""  # the operator's to fill in
    env.update(SECRET_KEY=secrets.token_urlsafe(64), EXECUTOR_FERNET_KEYS=Fernet.generate_key().decode(),
               DATABASE_URL=os.environ["DATABASE_URL"], REDIS_URL=os.environ["REDIS_URL"])  # fmt: skip
    env.update(overrides)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def check_deploy(env: dict[str, str]) -> tuple[int, str]:
    result = run(["manage.py", "check", "--deploy"], env)
    return result.returncode, result.stdout + result.stderr


def test_it_passes_check_deploy_with_the_documented_production_settings(tmp_path):
    env = documented_production_env(tmp_path)
    assert env["EXECUTOR_HTTPS"] == "true" and env["DEBUG"] == "false" and len(env["SECRET_KEY"]) >= 50

    returncode, output = check_deploy(env)

    assert returncode == 0, output
    assert "WARNINGS" not in output and "?: (security." not in output, output
    assert "System check identified no issues" in output


def test_check_deploy_does_warn_when_https_is_off(tmp_path):
    """The check above is a real one: the same settings over plain HTTP are reported."""
    returncode, output = check_deploy(documented_production_env(tmp_path, EXECUTOR_HTTPS="false"))

    assert returncode == 0  # warnings, not errors
    for check_id in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check_id in output, output


def test_opting_in_to_hsts_subdomains_and_preload_needs_no_silenced_check(tmp_path):
    env = documented_production_env(tmp_path, EXECUTOR_HSTS_INCLUDE_SUBDOMAINS="true", EXECUTOR_HSTS_PRELOAD="true")
    returncode, output = check_deploy(env)
    assert returncode == 0 and "System check identified no issues (0 silenced)." in output, output


# Requests through Django's test client inside the subprocess: status, Location and HSTS for each path and scheme.
PROBE = """
import django, json, sys
django.setup()
from django.test import Client
client, answers = Client(), {}
for path, headers in json.loads(sys.argv[1]):
    response = client.get(path, headers={"host": "127.0.0.1:8000", **headers})
    answers[path + " " + json.dumps(headers)] = [response.status_code, response.get("Location", ""),
                                                 response.get("Strict-Transport-Security", "")]
print(json.dumps(answers))
"""


def probe(env: dict[str, str], requests: list[tuple[str, dict]]) -> dict[str, list]:
    result = run(["-c", PROBE, json.dumps(requests)], {**env, "DJANGO_SETTINGS_MODULE": "executor_project.settings"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_production_redirects_plain_http_to_https_but_not_the_health_check(tmp_path):
    proxied = {"X-Forwarded-Proto": "https"}
    answers = probe(documented_production_env(tmp_path), [("/admin/", {}), ("/healthz", {}), ("/admin/", proxied)])

    status, location, hsts = answers["/admin/ {}"]
    assert (status, location) == (301, "https://127.0.0.1:8000/admin/")
    status, location, _ = answers["/healthz {}"]
    assert status in (200, 503) and location == ""  # answered over HTTP (503: the test has no executor database)
    status, location, hsts = answers['/admin/ {"X-Forwarded-Proto": "https"}']
    assert status == 302 and location.startswith("/admin/login/")  # through the proxy: the app itself
    assert hsts == "max-age=31536000"


@pytest.mark.parametrize("quick_start_env", [{}, {"EXECUTOR_HTTPS": "false"}])
def test_the_quick_start_still_works_over_plain_http(tmp_path, quick_start_env):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "EXECUTOR_DATA_DIR": str(tmp_path / "data"),
           **quick_start_env}  # fmt: skip
    answers = probe(env, [("/admin/login/", {})])
    status, location, hsts = answers["/admin/login/ {}"]
    assert (status, location, hsts) == (200, "", "")
