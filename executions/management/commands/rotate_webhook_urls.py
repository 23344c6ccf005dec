from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from executions.models import NotificationRule
from packages.encryption import EncryptionError, rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every notification rule's webhook URL under the first key of EXECUTOR_FERNET_KEYS (with "
        "rotate_secrets, step 2 of a key rotation: packages cannot reach the executions app's rules)."
    )

    def handle(self, *args, **options):
        # One transaction: a URL that cannot be decrypted stops the rotation with nothing half-done.
        try:
            with transaction.atomic():
                rules = list(NotificationRule.objects.exclude(webhook_url_encrypted="").select_for_update())
                for rule in rules:
                    rule.webhook_url_encrypted = rotate(rule.webhook_url_encrypted)
                NotificationRule.objects.bulk_update(rules, ["webhook_url_encrypted"])
        except EncryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {len(rules)} webhook URL(s) under the first key.")
