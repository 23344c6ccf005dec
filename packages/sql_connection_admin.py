"""The admin of SQL connections: the databases packages' SQL steps may reach, defined by administrators only.

The URL is write-only, like every secret: the form never renders it (not even masked), an empty field keeps the
stored one, and the page shows only user@host:port/database so connections can be told apart. Only superusers
see and manage them (a connection may serve every project).
"""

from django import forms
from django.contrib import admin
from django.utils.html import format_html

from .access_admin import PlatformAdmin
from .audit_admin import AuditedAdminMixin
from .models import SqlConnection
from .sql_connections import InvalidSqlUrl, check_url, describe, set_url


class SqlConnectionForm(forms.ModelForm):
    url = forms.CharField(
        label="URL",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="postgresql://user:password@host:5432/database, naming a least-privilege role (see the README). "
        "Stored encrypted and never shown again. Leave empty to keep the stored one.",
    )

    class Meta:
        model = SqlConnection
        fields = ["name", "description", "project", "url"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not url and not self.instance.pk:
            raise forms.ValidationError("A new SQL connection needs a URL.")
        if url:
            try:
                check_url(url)
            except InvalidSqlUrl as exc:
                raise forms.ValidationError(str(exc)) from None  # the message never quotes the URL
        return url

    def save(self, commit: bool = True) -> SqlConnection:
        if self.cleaned_data.get("url"):
            set_url(self.instance, self.cleaned_data["url"])
        return super().save(commit)


@admin.register(SqlConnection)
class SqlConnectionAdmin(AuditedAdminMixin, PlatformAdmin):
    form = SqlConnectionForm
    list_display = ["name", "available_to", "description", "updated_at"]
    list_filter = ["project"]
    list_select_related = ["project"]
    search_fields = ["name", "description"]
    fields = ["name", "description", "project", "url", "connects_to", "usage", "updated_at"]
    readonly_fields = ["connects_to", "usage", "updated_at"]

    @admin.display(description="Project", ordering="project__name")
    def available_to(self, connection: SqlConnection) -> str:
        return connection.project.name if connection.project_id else "every project"

    @admin.display(description="Connects to")
    def connects_to(self, connection: SqlConnection) -> str:
        # Decrypted server-side for this line only; the password never reaches the page.
        return describe(connection) if connection.pk else "—"

    @admin.display(description="Used by a package")
    def usage(self, connection: SqlConnection) -> str:
        name = connection.name or "<name>"
        return format_html(
            '<code>{{"sql_connection": "{}"}}</code> in the package\'s config.json; its SQL steps then run against '
            "this database. Without that key they use the platform default (EXECUTOR_SQL_DATABASE_URL).",
            name,
        )
