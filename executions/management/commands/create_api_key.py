"""manage.py create_api_key NAME: issue an API key and print it (the only time it is shown)."""

from django.core.management.base import BaseCommand

from executions.models import ApiKey


class Command(BaseCommand):
    help = "Issue an API key for the HTTP API and print it once; only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="who or what uses the key")

    def handle(self, *args, name: str, **options):
        api_key, key = ApiKey.issue(name)
        self.stderr.write(f"API key {api_key.hint}… for {name!r} issued; it is not shown again.")
        self.stdout.write(key)
