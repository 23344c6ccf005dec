"""The admin of Git repositories: connect one, show its deploy key, Sync Now, regenerate keys."""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from executions.admin import status_badge

from .git_credentials import regenerate_deploy_key, set_secret_field
from .models import GitAuth, GitRepository


class GitRepositoryForm(forms.ModelForm):
    # Write-only, like every secret: an empty field keeps what is stored.
    https_token = forms.CharField(
        label="HTTPS token", required=False, widget=forms.PasswordInput(render_value=False),
        help_text="For HTTPS authentication: a token with read access. Leave empty to keep the stored one.",
    )  # fmt: skip
    webhook_secret = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False),
        help_text="The secret the Git host signs push webhooks with (GitHub: X-Hub-Signature-256). Leave empty to "
        "keep the stored one.",
    )  # fmt: skip

    class Meta:
        model = GitRepository
        fields = ["project", "url", "branch", "auth"]

    def clean(self):
        cleaned = super().clean()
        has_token = cleaned.get("https_token") or self.instance.https_token_encrypted
        if cleaned.get("auth") == GitAuth.HTTPS_TOKEN and not has_token:
            self.add_error("https_token", "HTTPS token authentication needs a token.")
        return cleaned


@admin.register(GitRepository)
class GitRepositoryAdmin(admin.ModelAdmin):
    form = GitRepositoryForm
    list_display = ["url", "project", "branch", "status_display", "last_sync_at", "short_commit", "error_line"]
    list_filter = ["status", "project"]
    list_select_related = ["project"]
    search_fields = ["url"]
    actions = ["sync_now", "regenerate_keys"]
    readonly_fields = ["deploy_public_key_display", "webhook", "status_display", "last_sync_at", "current_commit",
                       "branch_list", "last_error", "report", "package_list"]  # fmt: skip
    fieldsets = [
        (None, {"fields": ["project", "url", "branch", "auth", "https_token", "deploy_public_key_display"]}),
        ("Push webhook", {"fields": ["webhook_secret", "webhook"]}),
        (
            "Last sync",
            {
                "fields": [
                    "status_display",
                    "last_sync_at",
                    "current_commit",
                    "branch_list",
                    "last_error",
                    "report",
                    "package_list",
                ]
            },
        ),  # fmt: skip
    ]

    def save_model(self, request, obj, form, change):
        set_secret_field(obj, "https_token", form.cleaned_data.get("https_token", ""))
        set_secret_field(obj, "webhook_secret", form.cleaned_data.get("webhook_secret", ""))
        if obj.auth == GitAuth.DEPLOY_KEY and not obj.deploy_private_key_encrypted:
            regenerate_deploy_key(obj)
            messages.info(request, "A deploy key was generated: add its public key to the repository's deploy "
                                   "keys (read access), then Sync Now.")  # fmt: skip
        super().save_model(request, obj, form, change)

    @admin.action(description="Sync now")
    def sync_now(self, request, queryset):
        # Imported here: every process loads the admin (workers too), and dulwich is needed only to sync.
        from .git_sync import sync_repository

        for repository in queryset.select_related("project"):
            report = sync_repository(repository)
            summary = f"{repository}: {report.error}" if report.error else _summary(repository, report)
            level = messages.SUCCESS if report.ok else messages.ERROR if report.error else messages.WARNING
            self.message_user(request, summary, level)

    @admin.action(description="Regenerate deploy keys")
    def regenerate_keys(self, request, queryset):
        for repository in queryset.select_related("project"):
            regenerate_deploy_key(repository)
            repository.save(update_fields=["deploy_private_key_encrypted", "deploy_public_key"])
        self.message_user(request, "New deploy keys: replace the public keys at the Git host.", messages.WARNING)

    @admin.display(description="Deploy key (public)")
    def deploy_public_key_display(self, repository: GitRepository) -> str:
        if not repository.deploy_public_key:
            return "— (choose Deploy key authentication and save to generate one)"
        help_text = ("Add it to the repository's deploy keys (read-only). The private key is kept encrypted and "
                     "never shown; the Regenerate deploy keys action replaces both.")  # fmt: skip
        return format_html('<pre class="executor-output">{}</pre><p class="help">{}</p>',
                           repository.deploy_public_key, help_text)  # fmt: skip

    @admin.display(description="Webhook URL")
    def webhook(self, repository: GitRepository) -> str:
        if not repository.pk:
            return "Save the repository first."
        url = reverse("git_webhook", args=[repository.pk])
        return format_html("<code>{}</code> (content type application/json, push events)", url)

    @admin.display(description="Status", ordering="status")
    def status_display(self, repository: GitRepository) -> str:
        colour = {"ok": "completed", "partial": "cancelled", "failed": "failed", "syncing": "running"}
        return status_badge(colour.get(repository.status, "pending"), repository.get_status_display())

    @admin.display(description="Commit")
    def short_commit(self, repository: GitRepository) -> str:
        return repository.current_commit[:10] or "—"

    @admin.display(description="Last error")
    def error_line(self, repository: GitRepository) -> str:
        return repository.last_error.splitlines()[0] if repository.last_error else ""

    @admin.display(description="Branches found")
    def branch_list(self, repository: GitRepository) -> str:
        return ", ".join(repository.branches) or "—"

    @admin.display(description="Last report")
    def report(self, repository: GitRepository) -> str:
        report = repository.last_report or {}
        lists = (("Created", "created"), ("Updated", "updated"), ("Deactivated", "deactivated"))
        rows = [(label, ", ".join(report.get(key) or []) or "—") for label, key in lists]
        rows += [(f"Failed: {name}", error) for name, error in (report.get("failed") or {}).items()]
        return format_html_join("", "<div><strong>{}</strong>: {}</div>", rows) if report else "—"

    @admin.display(description="Packages")
    def package_list(self, repository: GitRepository) -> str:
        packages = repository.packages.order_by("package_name") if repository.pk else []
        return format_html_join(", ", '<a href="{}">{}</a>{}', (
            (reverse("admin:packages_package_change", args=[p.pk]), p.package_name, "" if p.active else " (inactive)")
            for p in packages)) or "—"  # fmt: skip


def _summary(repository: GitRepository, report) -> str:
    counts = {name: len(getattr(report, name)) for name in ("created", "updated", "deactivated", "failed")}
    return f"{repository} at {report.commit[:10]}: " + ", ".join(f"{name} {n}" for name, n in counts.items())
