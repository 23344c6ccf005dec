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
        "Start a manual execution of a package; prints its id (and, with --wait, its result as JSON). When the "
        "broker is away the run is recorded and queued as soon as it is back (said on stderr, exit status 0)."
    )

    def add_arguments(self, parser):
        parser.add_argument("package_name")
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--wait", action="store_true", help="Wait for the execution to finish.")
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait with --wait.")

    def handle(self, *args, package_name: str, param: list[str], wait: bool, timeout: float, **options):
        package = Package.objects.filter(package_name=package_name).first()
        if package is None:
            raise CommandError(f"No package named {package_name!r}.")
        params = dict(parse_param(item) for item in param)
        try:
            execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
        except TriggerRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(execution.id))
        if getattr(execution, "queued", True) is False:
            # Not an error: the run is recorded and the reaper publishes it once the broker is back.
            self.stderr.write(f"Execution {execution.id} recorded, queued as soon as the broker is back.")
        if not wait:
            return
        try:
            execution = wait_until_finished(execution, timeout, poll_seconds=0.5)
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        # The HTTP API's shape and JSON encoding (ninja's encoder is DjangoJSONEncoder), plus the steps' output.
        result = execution_as_dict(execution, with_output=True)
        self.stdout.write(json.dumps(result, indent=2, cls=DjangoJSONEncoder))
        if execution.status != ExecutionStatus.COMPLETED:
            raise CommandError(f"Execution {execution.id} ended {execution.status}.", returncode=1)
