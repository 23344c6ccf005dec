"""What the fault suite needs in its stack's database, made through the executor's own code in a process of its own
(`python -m tests.faults.seed ...` with the stack's environment): the test process's Django may be configured for
another database (`make test` runs this suite beside the others), so the suite never uses its ORM.

    setup PORT       the packages (importer, as `manage.py import_package` does), a platform API key and a
                     superuser for the admin; prints them as JSON
    schedule NAME    activate the every-minute package NAME, or `unschedule NAME` to deactivate it
"""

import json
import os
import secrets
import sys

SLEEPER = "faults_sleeper"  # subscribes to faults.sleep
BURST = ("faults_burst_a", "faults_burst_b")  # both subscribe to faults.burst
MINUTELY = "faults_minutely"  # "* * * * *", inactive until a test activates it
ADMIN_USER = "faults"


def setup(port: int) -> dict:
    from django.contrib.auth import get_user_model

    from executions.models import ApiKey
    from packages.models import Package

    from .counter import STEP_SCRIPT

    script = STEP_SCRIPT.format(port=port).encode()
    _import(SLEEPER, script, trigger_events=["faults.sleep"])
    for name in BURST:
        _import(name, script, trigger_events=["faults.burst"])
    _import(MINUTELY, script, schedule="* * * * *", active=False)
    # The counter is reached over the network: the importer has no manifest key for it, so it is set here.
    Package.objects.filter(package_name__startswith="faults_").update(network_access=True)
    _, key = ApiKey.issue("fault suite")
    password = secrets.token_urlsafe(16)
    get_user_model().objects.create_superuser(ADMIN_USER, password=password)
    packages = dict(Package.objects.filter(package_name__startswith="faults_").values_list("package_name", "pk"))
    return {"api_key": key, "admin_user": ADMIN_USER, "admin_password": password, "packages": packages}


def set_active(package_name: str, active: bool) -> dict:
    """As the admin does: save the package, then bring its beat task in line (packages/schedules.py)."""
    from packages.models import Package
    from packages.schedules import sync_package_schedule

    package = Package.objects.get(package_name=package_name)
    package.active = active
    package.save()
    sync_package_schedule(package)
    return {"package": package.pk, "active": active}


def _import(name: str, script: bytes, **manifest) -> None:
    from packages.importer import import_package_files

    import_package_files(name, {"manifest.json": json.dumps(manifest).encode(), "step.py": script})


def main(argv: list[str]) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "executor_project.settings")
    django.setup()
    command, argument = argv
    if command == "setup":
        result = setup(int(argument))
    elif command in {"schedule", "unschedule"}:
        result = set_active(argument, command == "schedule")
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
