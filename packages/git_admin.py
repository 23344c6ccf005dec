"""The admin of Git repositories: connect one, show its deploy key, queue syncs, regenerate keys.

Syncs are queued on a worker (packages/git_webhook.py `queue_sync`), never run inside the web request: a
fetch can take minutes and talks to hosts the web process has no business reaching.

Repositories are their project's: maintainers and owners add, edit and sync them; every action checks that role
on each selected repository, skips the others and says so.
"""

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from executor_project.badges import status_badge

from . import access
from .access import Action
from .access_admin import ProjectScopedAdmin
from .admin_filters import ProjectListFilter
from .audit import AuditAction, record
from .audit_admin import AuditedAdminMixin
from .git_credentials import (
    bind_credentials_to_url,
    forget_host_key,
    regenerate_deploy_key,
    set_secret_field,
    stored_token_fits,
    url_host,
)
from .git_report import skipped_lines
from .git_webhook import queue_sync
from .models import GitAuth, GitRepository


class GitRepositoryForm(forms.ModelForm):
    # Write-only, like every secret: an empty field keeps what is stored.
    https_token = forms.CharField(
        label="HTTPS token", required=False, widget=forms.PasswordInput(render_value=False),
        help_text="For HTTPS authentication: a token with read access. Leave empty to keep the stored one.",
    )  # fmt: skip
    webhook_secret = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False),
        help_text="The secret the Git host proves push webhooks with (GitHub, Gitea, Forgejo: the webhook's secret; "
        "GitLab: its secret token). Leave empty to keep the stored one.",
    )  # fmt: skip

    class Meta:
        model = GitRepository
        fields = ["project", "url", "branch", "auth"]
        help_texts = {
            "url": "git@host:org/repo.git, ssh://host/org/repo.git or https://host/org/repo.git. Hosts on the "
            "server's own network need EXECUTOR_GIT_ALLOWED_HOSTS; file:// and local paths EXECUTOR_GIT_ALLOW_LOCAL."
        }

    def clean(self):
        cleaned = super().clean()
        url = cleaned.get("url") or self.instance.url
        # A stored token counts only for the host it was given for: a new host needs the token entered again.
        if cleaned.get("auth") == GitAuth.HTTPS_TOKEN and not cleaned.get("https_token"):
            if not stored_token_fits(self.instance, url):
                bound = self.instance.credentials_host if self.instance.https_token_encrypted else ""
                self.add_error("https_token", (
                    f"The stored token was given for {bound} and is never sent to another host: enter the token "
                    f"for {url_host(url) or 'this URL'}." if bound else "HTTPS token authentication needs a token."
                ))  # fmt: skip
        return cleaned


@admin.register(GitRepository)
class GitRepositoryAdmin(AuditedAdminMixin, ProjectScopedAdmin):
    form = GitRepositoryForm
    list_display = ["url", "project", "branch", "status_display", "last_sync_at", "short_commit", "error_line"]
    list_filter = ["status", ("project", ProjectListFilter)]
    list_select_related = ["project"]
    search_fields = ["url"]
    actions = ["sync_now", "sync_adopting", "regenerate_keys", "forget_host_keys"]
    readonly_fields = ["deploy_public_key_display", "host_key", "webhook", "status_display", "last_sync_at",
                       "current_commit", "branch_list", "last_error", "report", "package_list"]  # fmt: skip
    fieldsets = [
        (
            None,
            {"fields": ["project", "url", "branch", "auth", "https_token", "deploy_public_key_display", "host_key"]},
        ),  # fmt: skip
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
        for forgotten in bind_credentials_to_url(obj, new_token=form.cleaned_data.get("https_token", "")):
            messages.warning(request, f"The URL now points to {url_host(obj.url) or 'a local path'}: {forgotten}.")
        set_secret_field(obj, "webhook_secret", form.cleaned_data.get("webhook_secret", ""))
        if obj.auth == GitAuth.DEPLOY_KEY and not obj.deploy_private_key_encrypted:
            regenerate_deploy_key(obj)
            messages.info(request, "A deploy key was generated: add its public key to the repository's deploy "
                                   "keys (read access), then Sync Now.")  # fmt: skip
        super().save_model(request, obj, form, change)

    def _editable(self, request, queryset: QuerySet) -> list[GitRepository]:
        """The selected repositories the user may change; the others are skipped and named in a message (the list
        shows every repository of the user's projects, including ones where they only view)."""
        allowed, refused = [], []
        for repository in queryset.select_related("project"):
            (allowed if access.can(request.user, Action.EDIT, repository) else refused).append(repository)
        if refused:
            names = ", ".join(str(repository) for repository in refused)
            self.message_user(request, f"Skipped (changing them needs the maintainer role in their project): {names}.",
                              messages.WARNING)  # fmt: skip
        return allowed

    @admin.action(description="Sync now", permissions=["change"])
    def sync_now(self, request, queryset):
        for repository in self._editable(request, queryset):
            with transaction.atomic():  # the entry is kept only if the sync was queued
                record(AuditAction.SYNC, repository, user=request.user)
                queue_sync(repository)
            self.message_user(request, f"Sync of {repository} queued; the page shows the result when it ends.",
                              messages.SUCCESS)  # fmt: skip

    @admin.action(description="Sync now, adopting the packages it left alone", permissions=["adopt"])
    def sync_adopting(self, request, queryset):
        """Adopts the packages the last sync reported as conflicts: their scripts, project and secrets then belong
        to the repository. Superusers only: it can move a package out of another project."""
        for repository in queryset:
            names = sorted((repository.last_report or {}).get("conflicts") or {})
            if not names:
                self.message_user(request, f"{repository}: the last sync left no package alone; nothing to adopt.",
                                  messages.INFO)  # fmt: skip
                continue
            with transaction.atomic():
                record(AuditAction.SYNC, repository, user=request.user, details={"adopt": names})
                queue_sync(repository, adopt=names)
            self.message_user(request, f"Sync of {repository} queued, adopting {', '.join(names)}; the page shows "
                              "the result when it ends.", messages.SUCCESS)  # fmt: skip

    def has_adopt_permission(self, request) -> bool:
        return access.is_superuser(request.user)

    @admin.action(description="Forget pinned SSH host keys", permissions=["change"])
    def forget_host_keys(self, request, queryset):
        repositories = self._editable(request, queryset)
        for repository in repositories:
            with transaction.atomic():
                forget_host_key(repository)
                repository.save(update_fields=["ssh_known_hosts", "credentials_host"])
                record(AuditAction.EDIT, repository, user=request.user,
                       details={"fields": ["ssh_known_hosts", "credentials_host"]})  # fmt: skip
        if repositories:
            self.message_user(request, "Pinned SSH host keys forgotten: the next sync trusts the key each host "
                              "shows and pins it again. Do this only if you know the host's key changed.",
                              messages.WARNING)  # fmt: skip

    @admin.action(description="Regenerate deploy keys", permissions=["change"])
    def regenerate_keys(self, request, queryset):
        repositories = self._editable(request, queryset)
        for repository in repositories:
            with transaction.atomic():
                regenerate_deploy_key(repository)
                repository.save(update_fields=["deploy_private_key_encrypted", "deploy_public_key"])
                record(AuditAction.REGENERATE_KEYS, repository, user=request.user)
        if repositories:
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
        if not report:
            return "—"
        lists = (("Created", "created"), ("Updated", "updated"), ("Deactivated", "deactivated"))
        rows = [(label, ", ".join(report.get(key) or []) or "—") for label, key in lists]
        rows += [(f"Failed: {name}", error) for name, error in (report.get("failed") or {}).items()]
        rows += [(f"Left alone: {name}", reason) for name, reason in (report.get("conflicts") or {}).items()]
        rows += [("Note", note) for note in report.get("notes") or []]
        rows += [("Not imported", line) for line in skipped_lines(report.get("skipped") or {})]
        return format_html_join("", "<div><strong>{}</strong>: {}</div>", rows)

    @admin.display(description="Pinned SSH host key")
    def host_key(self, repository: GitRepository) -> str:
        if not repository.ssh_known_hosts:
            return "— (pinned at the first sync over SSH)"
        return format_html("<code>{}</code> for {}", repository.ssh_known_hosts.strip(), repository.credentials_host)

    @admin.display(description="Packages")
    def package_list(self, repository: GitRepository) -> str:
        packages = repository.packages.order_by("package_name") if repository.pk else []
        return format_html_join(", ", '<a href="{}">{}</a>{}', (
            (reverse("admin:packages_package_change", args=[p.pk]), p.package_name, "" if p.active else " (inactive)")
            for p in packages)) or "—"  # fmt: skip
