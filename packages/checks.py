from django.conf import settings
from django.core.checks import Error, register

from .encryption import EncryptionError, check_keys


@register()
def check_fernet_keys(app_configs, **kwargs):
    """Secrets cannot be stored or read without a valid key: say so at start-up, not at the first secret."""
    try:
        check_keys(settings.EXECUTOR_FERNET_KEYS)
    except EncryptionError as exc:
        return [Error(str(exc), id="packages.E001")]
    return []
