"""The admin of notification rules and their deliveries.

A rule is its package's or its project's: those who may edit that package or project (maintainers, owners;
packages/access.py) add and change it, and viewers see it. The webhook URL is write-only, like every secret: the form
never renders it, an empty field keeps the stored one, and pages show only scheme://host. Deliveries are the
system's record: read-only for everyone, visible with their execution's project; the Retry now action puts failed
ones back in the queue for those who may edit the rule.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from executor_project.badges import status_badge
from packages import access
from packages.access import Action
from packages.access_admin import MissingIsNotFound
from packages.admin_filters import ProjectListFilter
from packages.audit_admin import AuditedAdminMixin
from packages.models import Package

from . import deliveries, notifications
from .models import Delivery, NotificationRule
from .notification_models import DeliveryStatus, NotifyChannel
from .webhook_urls import UnsafeWebhookUrl, check

DELIVERY_BADGES = {DeliveryStatus.PENDING: "pending", DeliveryStatus.SENT: "completed", DeliveryStatus.FAILED: "failed"}


class NotificationRuleForm(forms.ModelForm):
    webhook_url = forms.CharField(
        label="Webhook URL", required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="https://… (a Slack or Teams webhook URL, or your own receiver). Stored encrypted and never shown "
        "again; leave empty to keep the stored one. Hosts on the server's own network need "
        "EXECUTOR_NOTIFICATION_ALLOWED_HOSTS.",
    )  # fmt: skip

    class Meta:
        model = NotificationRule
        fields = ["name", "project", "package", "active", "on_failure", "on_recovery", "on_every_finish", "channel",
                  "email_to", "webhook_url", "webhook_format"]  # fmt: skip

    def clean(self):
        cleaned = super().clean()
        if bool(cleaned.get("project")) == bool(cleaned.get("package")):
            raise ValidationError("Choose a project (all its packages) or one package.")
        if not (cleaned.get("on_failure") or cleaned.get("on_recovery") or cleaned.get("on_every_finish")):
            raise ValidationError("Tick at least one of on failure, on recovery, on every finish.")
        if cleaned.get("channel") == NotifyChannel.EMAIL:
            self._check_addresses(cleaned.get("email_to", ""))
        elif not cleaned.get("webhook_url") and not self.instance.webhook_url_encrypted:
            self.add_error("webhook_url", "A webhook rule needs its URL.")
        return cleaned

    def clean_webhook_url(self) -> str:
        url = self.cleaned_data["webhook_url"].strip()
        if url:
            try:
                check(url)  # resolved now; the worker checks again before each post
            except UnsafeWebhookUrl as exc:
                raise ValidationError(str(exc)) from None  # the message never quotes the URL
        return url

    def _check_addresses(self, text: str) -> None:
        addresses = NotificationRule(email_to=text).recipients
        if not addresses:
            self.add_error("email_to", "An email rule needs at least one address.")
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                self.add_error("email_to", f"{address[:100]} is not an email address.")

    def save(self, commit: bool = True) -> NotificationRule:
        if self.cleaned_data.get("webhook_url"):
            self.instance.set_webhook_url(self.cleaned_data["webhook_url"])
        return super().save(commit)


def _may(request, action: Action, obj) -> bool:
    return access.can_anywhere(request.user, action) if obj is None else access.can(request.user, action, obj)


@admin.register(NotificationRule)
class NotificationRuleAdmin(AuditedAdminMixin, MissingIsNotFound, admin.ModelAdmin):
    form = NotificationRuleForm
    list_display = ["name", "scope", "events", "channel", "target", "active"]
    list_filter = ["channel", "active"]
    list_select_related = ["project", "package"]
    search_fields = ["name", "package__package_name", "project__name"]
    readonly_fields = ["webhook_target_display", "recent_deliveries"]
    fieldsets = [
        (None, {"fields": ["name", "project", "package", "active"]}),
        ("When", {"fields": ["on_failure", "on_recovery", "on_every_finish"]}),
        ("Where", {"fields": ["channel", "email_to", "webhook_url", "webhook_target_display", "webhook_format"]}),
        ("Deliveries", {"fields": ["recent_deliveries"]}),
    ]

    def get_queryset(self, request):
        # A rule reaches its project directly or through its package (packages/access.py project_id_of).
        ids = access.project_ids(request.user, Action.VIEW)
        queryset = super().get_queryset(request)
        return queryset if ids is None else queryset.filter(Q(project__in=ids) | Q(package__project__in=ids))

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return _may(request, Action.VIEW, obj)

    def has_add_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.EDIT)

    def has_change_permission(self, request, obj=None) -> bool:
        return _may(request, Action.EDIT, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_change_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        # Rules go only where the user may edit: their projects, their projects' packages.
        if db_field.name == "project":
            kwargs["queryset"] = access.projects(request.user, Action.EDIT)
        elif db_field.name == "package":
            packages = Package.objects.select_related("project").order_by("package_name")
            kwargs["queryset"] = access.scoped(packages, request.user, Action.EDIT)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        # The project or package may just have been chosen: the role applies where the rule lands too.
        if not access.can(request.user, Action.EDIT, obj):
            raise PermissionDenied
        super().save_model(request, obj, form, change)

    @admin.display(description="For")
    def scope(self, rule: NotificationRule) -> str:
        return f"package {rule.package.package_name}" if rule.package_id else f"project {rule.project.name}"

    @admin.display(description="On")
    def events(self, rule: NotificationRule) -> str:
        if rule.on_every_finish:
            return "every finish"
        return ", ".join(name for name, on in (("failure", rule.on_failure), ("recovery", rule.on_recovery)) if on)

    @admin.display(description="To")
    def target(self, rule: NotificationRule) -> str:
        if rule.channel == NotifyChannel.EMAIL:
            return ", ".join(rule.recipients)
        return f"{rule.webhook_target} ({rule.get_webhook_format_display()})"

    @admin.display(description="Posts to")
    def webhook_target_display(self, rule: NotificationRule) -> str:
        return f"{rule.webhook_target}/… (the rest of the URL is kept encrypted)" if rule.webhook_target else "—"

    @admin.display(description="Recent deliveries")
    def recent_deliveries(self, rule: NotificationRule) -> str:
        if not rule.pk:
            return "—"
        url = reverse("admin:executions_delivery_changelist") + f"?rule__id__exact={rule.pk}"
        counts = {status: rule.deliveries.filter(status=status).count() for status in DeliveryStatus.values}
        return format_html('<a href="{}">{} sent, {} pending, {} failed</a>', url, counts["sent"],
                           counts["pending"], counts["failed"])  # fmt: skip


@admin.register(Delivery)
class DeliveryAdmin(MissingIsNotFound, admin.ModelAdmin):
    list_display = ["created_at", "execution_link", "rule_link", "event", "status_display", "attempts", "sent_at",
                    "last_error"]  # fmt: skip
    list_filter = ["status", "event", ("execution__package__project", ProjectListFilter)]
    list_select_related = ["rule", "execution__package"]
    actions = ["retry_now"]
    fields = ["execution_link", "rule_link", "event", "status_display", "attempts", "last_error", "created_at",
              "next_attempt_at", "sent_at"]  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return access.scoped(queryset, request.user, Action.VIEW, "execution__package__project")

    def has_module_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return _may(request, Action.VIEW, obj)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_retry_permission(self, request) -> bool:
        return access.can_anywhere(request.user, Action.EDIT)

    @admin.action(description="Retry now", permissions=["retry"])
    def retry_now(self, request, queryset):
        selected = queryset.select_related("rule__package")
        allowed = [delivery.pk for delivery in selected if access.can(request.user, Action.EDIT, delivery.rule)]
        with transaction.atomic():
            retried = deliveries.retry(allowed)
            pending = Delivery.objects.filter(pk__in=allowed, status=DeliveryStatus.PENDING)
            ids = list(pending.values_list("pk", flat=True))
            transaction.on_commit(lambda: notifications.publish(ids))
        skipped = queryset.count() - len(allowed)
        note = f" {skipped} skipped (retrying needs the maintainer role in their project)." if skipped else ""
        self.message_user(request, f"{retried} failed deliveries queued again.{note}",
                          messages.SUCCESS if retried else messages.INFO)  # fmt: skip

    @admin.display(description="Execution", ordering="execution__created_at")
    def execution_link(self, delivery: Delivery) -> str:
        url = reverse("admin:executions_execution_change", args=[delivery.execution_id])
        return format_html('<a href="{}">{}</a>', url, delivery.execution)

    @admin.display(description="Rule", ordering="rule__name")
    def rule_link(self, delivery: Delivery) -> str:
        url = reverse("admin:executions_notificationrule_change", args=[delivery.rule_id])
        return format_html('<a href="{}">{}</a>', url, delivery.rule)

    @admin.display(description="Status", ordering="status")
    def status_display(self, delivery: Delivery) -> str:
        return status_badge(DELIVERY_BADGES[delivery.status], delivery.get_status_display())
