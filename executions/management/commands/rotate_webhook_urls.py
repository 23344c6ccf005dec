from django.core.management.base import BaseCommand, CommandError

from executions.models import NotificationRule
from packages.encryption import EncryptionError, rotate_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every notification rule's webhook URL under the first key of EXECUTOR_FERNET_KEYS (with "
        "rotate_secrets, step 2 of a key rotation: packages cannot reach the executions app's rules)."
    )

    def handle(self, *args, **options):
        try:
            count = rotate_all(NotificationRule.objects.exclude(webhook_url_encrypted=""), "webhook_url_encrypted")
        except EncryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {count} webhook URL(s) under the first key.")
