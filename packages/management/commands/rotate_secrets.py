from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from packages.encryption import EncryptionError, rotate
from packages.models import Secret


class Command(BaseCommand):
    help = "Re-encrypt every stored secret under the first key of EXECUTOR_FERNET_KEYS (step 2 of a key rotation)."

    def handle(self, *args, **options):
        # One transaction: a value that cannot be decrypted stops the rotation with nothing half-done.
        try:
            with transaction.atomic():
                secrets = list(Secret.objects.select_for_update())
                for secret in secrets:
                    secret.encrypted_value = rotate(secret.encrypted_value)
                Secret.objects.bulk_update(secrets, ["encrypted_value"])
        except EncryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {len(secrets)} secret(s) under the first key; the old keys can go now.")
