"""What a notification says, composed by the worker from the ledger: the text of an email, and the JSON body of a
webhook in its three shapes (generic, Slack, Teams).

Every message holds the execution's link (EXECUTOR_BASE_URL + its admin page), the package, the project, the status
and its reason, and for a failure the last EXECUTOR_NOTIFICATION_STDERR_LINES lines of the failed step's stderr.
Stored output is masked already (workers/steps.py); the tail and the reason are masked again here with the
package's secrets as they are now, which also covers a secret added since the run. Should those secrets be
unreadable (a Fernet key dropped), the tail is left out rather than sent unmasked.
"""

import dataclasses
import logging

from django.conf import settings

from executions.models import Delivery, Execution, ExecutionStatus, StepStatus
from executions.notification_models import NotifyEvent
from packages.encryption import EncryptionError
from packages.models import secrets_for

from . import masking

logger = logging.getLogger(__name__)
HEADLINES = {NotifyEvent.FAILURE: "FAILED", NotifyEvent.RECOVERY: "RECOVERED"}
UNREADABLE_SECRETS = "(stderr left out: the package's secrets could not be read to mask it)"


@dataclasses.dataclass(frozen=True)
class Message:
    delivery_id: int
    event: str
    rule: str
    execution_id: str
    url: str
    status: str
    reason: str
    trigger_type: str
    package_name: str  # the technical name
    package_title: str
    project: str | None
    started_at: str | None
    finished_at: str | None
    failed_step: str | None
    stderr_tail: str

    @property
    def headline(self) -> str:
        """FAILED, RECOVERED, or the final status in capitals."""
        return HEADLINES.get(self.event, self.status.upper())

    @property
    def subject(self) -> str:
        where = f" ({self.project})" if self.project else ""
        return f"[Executor] {self.headline}: {self.package_name}{where}"


def compose(delivery: Delivery) -> Message:
    execution = Execution.objects.select_related("package__project").get(pk=delivery.execution_id)
    package = execution.package
    failed = execution.steps.filter(status=StepStatus.FAILED).order_by("position").first()
    secret_values = _secret_values(package)
    reason = masking.mask(execution.status_reason, secret_values or [])
    stderr_tail = ""
    if failed is not None and delivery.event == NotifyEvent.FAILURE:
        stderr_tail = UNREADABLE_SECRETS if secret_values is None else masking.mask(_tail(failed.stderr), secret_values)
    return Message(
        delivery_id=delivery.pk,
        event=delivery.event,
        rule=delivery.rule.name,
        execution_id=str(execution.id),
        url=execution_url(execution.pk),
        status=execution.status,
        reason=reason or _default_reason(execution.status),
        trigger_type=execution.trigger_type,
        package_name=package.package_name,
        package_title=package.name,
        project=package.project.name if package.project_id else None,
        started_at=execution.started_at.isoformat() if execution.started_at else None,
        finished_at=execution.finished_at.isoformat() if execution.finished_at else None,
        failed_step=f"{failed.position} ({failed.file_name})" if failed is not None else None,
        stderr_tail=stderr_tail,
    )


def execution_url(execution_id) -> str:
    """The execution's admin page. Written out rather than reversed: reversing loads the URL conf, and with it the
    HTTP API's pydantic models, into a worker that never serves a page (tests check it against reverse())."""
    return f"{settings.EXECUTOR_BASE_URL}/admin/executions/execution/{execution_id}/change/"


def email_body(message: Message) -> str:
    lines = [
        f"{message.headline}: {message.package_title} ({message.package_name})",
        "",
        f"Execution: {message.url}",
        f"Project:   {message.project or '-'}",
        f"Status:    {message.status}",
        f"Reason:    {message.reason}",
        f"Trigger:   {message.trigger_type}",
        f"Started:   {message.started_at or '-'}",
        f"Finished:  {message.finished_at or '-'}",
    ]
    if message.failed_step:
        lines.append(f"Failed step: {message.failed_step}")
    if message.stderr_tail:
        lines += ["", "Last lines of stderr:", "", message.stderr_tail]
    lines += ["", f"-- Sent by Executor for the notification rule '{message.rule}'."]
    return "\n".join(lines) + "\n"


def generic_payload(message: Message) -> dict:
    """The generic JSON body: every field, named plainly, for a receiver of one's own."""
    return {
        "event": message.event,
        "delivery_id": message.delivery_id,
        "rule": message.rule,
        "execution": {
            "id": message.execution_id, "url": message.url, "status": message.status, "reason": message.reason,
            "trigger_type": message.trigger_type, "started_at": message.started_at,
            "finished_at": message.finished_at, "failed_step": message.failed_step,
        },
        "package": {"name": message.package_title, "package_name": message.package_name},
        "project": message.project,
        "stderr_tail": message.stderr_tail,
    }  # fmt: skip


def slack_payload(message: Message) -> dict:
    """A Slack incoming webhook's body: `text` (the notification's fallback) and Block Kit blocks."""
    summary = f"{message.headline}: {message.package_name}" + (f" ({message.project})" if message.project else "")
    fields = [("Status", message.status), ("Reason", message.reason), ("Project", message.project or "-"),
              ("Trigger", message.trigger_type)]  # fmt: skip
    heading = f"*{_slack_escape(summary)}*\n<{message.url}|Open the execution>"
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": heading}},
        {"type": "section",
         "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"} for name, value in fields]},
    ]  # fmt: skip
    if message.stderr_tail:
        # ``` would end the code block early: a zero-width space between the backticks keeps it one block.
        tail = _slack_escape(message.stderr_tail[-2900:]).replace("```", "`\u200b``")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{tail}```"}})
    return {"text": f"{summary}: {message.url}", "blocks": blocks}


def teams_payload(message: Message) -> dict:
    """A Microsoft Teams workflow webhook's body: a message with one Adaptive Card (1.4)."""
    facts = [{"title": name, "value": value} for name, value in (
        ("Package", f"{message.package_title} ({message.package_name})"), ("Project", message.project or "-"),
        ("Status", message.status), ("Reason", message.reason), ("Trigger", message.trigger_type),
    )]  # fmt: skip
    body = [
        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True,
         "text": f"{message.headline}: {message.package_name}",
         "color": "Attention" if message.event == NotifyEvent.FAILURE else "Good"},
        {"type": "FactSet", "facts": facts},
    ]  # fmt: skip
    if message.stderr_tail:
        # A TextRun is plain text, where a TextBlock would render the script's output as Markdown (links included).
        run = {"type": "TextRun", "text": message.stderr_tail, "fontType": "Monospace"}
        body.append({"type": "RichTextBlock", "inlines": [run]})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
        "body": body, "actions": [{"type": "Action.OpenUrl", "title": "Open the execution", "url": message.url}],
    }  # fmt: skip
    return {"type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}  # fmt: skip


PAYLOADS = {"generic": generic_payload, "slack": slack_payload, "teams": teams_payload}


def _secret_values(package) -> list[str] | None:
    """The values to mask; None when they cannot be decrypted."""
    try:
        return list(secrets_for(package).values())
    except EncryptionError as exc:
        logger.error("notification for package %s: %s", package.package_name, exc)
        return None


def _tail(text: str) -> str:
    lines = settings.EXECUTOR_NOTIFICATION_STDERR_LINES
    return "\n".join(text.rstrip("\n").splitlines()[-lines:]) if lines else ""


def _default_reason(status: str) -> str:
    return "completed" if status == ExecutionStatus.COMPLETED else status


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn reads &, < and > as markup (links, mentions such as <!channel>): escaped, they are text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
