import json

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from executions.models import ExecutionStatus, TriggerType
from executions.services import TriggerRefused, trigger_execution
from executions.summary import execution_as_dict
from executions.waiting import wait_until_finished
from packages.models import Package


def parse_param(text: str) -> tuple[str, object]:
    """key=value; the value is read as JSON when it parses (numbers, true, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CommandError(f"--param {text!r}: expected key=value")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


class Command(BaseCommand):
    help = (
        "Start a manual execution of a package; prints its id (and, with --wait, its result as JSON; with --json "
        "one JSON document and nothing else on stdout). When the broker is away the run is recorded and queued as "
        "soon as it is back (said on stderr, exit status 0)."
    )

    def add_arguments(self, parser):
        parser.add_argument("package_name")
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--wait", action="store_true", help="Wait for the execution to finish.")
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait with --wait.")
        parser.add_argument(
            "--json",
            dest="as_json",
            action="store_true",
            help="Print one JSON document on stdout (the execution; with --wait when it ended, with each step's "
            "output), everything else on stderr: for pipes into jq.",
        )

    def handle(self, *args, package_name: str, param: list[str], wait: bool, timeout: float, as_json: bool, **options):
        package = Package.objects.filter(package_name=package_name).first()
        if package is None:
            raise CommandError(f"No package named {package_name!r}.")
        params = dict(parse_param(item) for item in param)
        try:
            execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
        except TriggerRefused as exc:
            raise CommandError(str(exc)) from None
        # With --json stdout carries the document alone, so the id goes where the other messages go.
        (self.stderr if as_json else self.stdout).write(str(execution.id))
        if getattr(execution, "queued", True) is False:
            # Not an error: the run is recorded and the reaper publishes it once the broker is back.
            self.stderr.write(f"Execution {execution.id} recorded, queued as soon as the broker is back.")
        if not wait:
            if as_json:
                self._print(execution_as_dict(execution))
            return
        try:
            execution = wait_until_finished(execution, timeout, poll_seconds=0.5)
        except TimeoutError as exc:
            if as_json:  # the document still comes, as the run stands: the caller's script reads its status
                execution.refresh_from_db()
                self._print(execution_as_dict(execution, with_output=True))
            raise CommandError(str(exc)) from None
        # The HTTP API's shape and JSON encoding (ninja's encoder is DjangoJSONEncoder), plus the steps' output.
        self._print(execution_as_dict(execution, with_output=True))
        if execution.status != ExecutionStatus.COMPLETED:
            raise CommandError(f"Execution {execution.id} ended {execution.status}.", returncode=1)

    def _print(self, document: dict) -> None:
        self.stdout.write(json.dumps(document, indent=2, cls=DjangoJSONEncoder))
