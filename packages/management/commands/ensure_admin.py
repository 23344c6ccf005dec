import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEVELOPMENT_PASSWORD = "executor-admin"


class Command(BaseCommand):
    help = "Create the superuser `admin` if it does not exist (password from EXECUTOR_ADMIN_PASSWORD)."

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            self.stdout.write("Superuser admin already exists.")
            return
        password = os.environ.get("EXECUTOR_ADMIN_PASSWORD") or DEVELOPMENT_PASSWORD
        User.objects.create_superuser("admin", email="", password=password)
        if password == DEVELOPMENT_PASSWORD:
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser admin with the development password {DEVELOPMENT_PASSWORD!r}; "
                    "set EXECUTOR_ADMIN_PASSWORD for anything but a laptop."
                )
            )
        else:
            self.stdout.write("Created superuser admin with the password from EXECUTOR_ADMIN_PASSWORD.")
