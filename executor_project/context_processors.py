from django.conf import settings


def sandbox_warning(request) -> dict:
    """Every admin page says so when scripts run without the sandbox."""
    return {"executor_sandbox_off": settings.EXECUTOR_SANDBOX == "off"}
