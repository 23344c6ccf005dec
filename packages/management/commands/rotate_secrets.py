from django.core.management.base import BaseCommand, CommandError

from packages.encryption import EncryptionError, rotate_all
from packages.models import Secret


class Command(BaseCommand):
    help = "Re-encrypt every stored secret under the first key of EXECUTOR_FERNET_KEYS (step 2 of a key rotation)."

    def handle(self, *args, **options):
        try:
            count = rotate_all(Secret.objects.all(), "encrypted_value")
        except EncryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {count} secret(s) under the first key; the old keys can go now.")
