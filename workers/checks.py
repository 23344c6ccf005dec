import os

from django.conf import settings
from django.core.checks import Warning, register


@register()
def check_script_runtime(app_configs, **kwargs):
    """Scripts run with their own interpreter; without it every Python step fails."""
    python = settings.EXECUTOR_SCRIPT_PYTHON
    if os.access(python, os.X_OK):
        return []
    return [
        Warning(
            f"The script runtime interpreter {python} does not exist: Python steps will fail.",
            hint="Run `make install`, or set EXECUTOR_SCRIPT_PYTHON to the runtime's python.",
            id="workers.W001",
        )
    ]


@register()
def check_sandbox_setting(app_configs, **kwargs):
    if settings.EXECUTOR_SANDBOX != "off":
        return []
    return [
        Warning(
            "EXECUTOR_SANDBOX=off: scripts run without bubblewrap isolation or resource limits.",
            hint="Only for development machines where user namespaces are unavailable.",
            id="workers.W002",
        )
    ]
