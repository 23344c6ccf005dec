"""Write-only secret forms: a value goes in, and is never rendered again (not even masked into the page)."""

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from executor_project import bounded_json
from executor_project.uploads import too_large

from .models import Secret, SecretScope, secret_name_validator

# One file sets at most this many secrets: each is encrypted and saved in the request that uploads it.
MAX_SECRETS_PER_FILE = 1000
_NAME_LENGTH = Secret._meta.get_field("name").max_length


def read_secrets_file(upload: UploadedFile | None) -> dict[str, str]:
    """The names and values of an uploaded secrets.json (a JSON object of names to strings), or {} for no file.

    Its size is checked before it is read (EXECUTOR_MAX_UPLOAD_BYTES); a file that is not such an object is refused
    with a ValidationError that names what is wrong and never quotes a value."""
    if upload is None:
        return {}
    limit = settings.EXECUTOR_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise forms.ValidationError(too_large(upload.name, limit, "EXECUTOR_MAX_UPLOAD_BYTES"))
    try:
        values = bounded_json.loads(upload.read())
    except bounded_json.JSONRejected as exc:
        raise forms.ValidationError(f"secrets.json cannot be imported: {exc}.") from None
    if not isinstance(values, dict):
        raise forms.ValidationError("secrets.json must hold a JSON object.")
    if len(values) > MAX_SECRETS_PER_FILE:
        raise forms.ValidationError(f"secrets.json holds {len(values)} secrets; at most {MAX_SECRETS_PER_FILE}.")
    if not all(isinstance(value, str) for value in values.values()):
        raise forms.ValidationError("secrets.json values must be strings.")
    for name in values:
        _check_name(name)
    return values


def _check_name(name: str) -> None:
    shown = name if len(name) <= 60 else f"{name[:60]}…"
    if len(name) > _NAME_LENGTH:
        raise forms.ValidationError(f"secrets.json: {shown!r} is longer than {_NAME_LENGTH} characters.")
    try:
        secret_name_validator(name)
    except forms.ValidationError:
        raise forms.ValidationError(f"secrets.json: {shown!r} is not a valid secret name.") from None


class SecretForm(forms.ModelForm):
    scope: str  # set by each subclass: the scope of the secrets its form creates

    value = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current value.",
    )

    class Meta:
        model = Secret
        fields = ["name", "value"]

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("value") and cleaned.get("name"):
            self.add_error("value", "A new secret needs a value.")
        return cleaned

    def save(self, commit=True):
        self.instance.scope = self.scope
        if self.cleaned_data.get("value"):
            self.instance.set_value(self.cleaned_data["value"])
        return super().save(commit)


class PackageSecretForm(SecretForm):
    scope = SecretScope.PACKAGE


class ProjectSecretForm(SecretForm):
    scope = SecretScope.PROJECT


class PlatformSecretForm(SecretForm):
    scope = SecretScope.PLATFORM


class UniqueNamesFormSet(forms.BaseInlineFormSet):
    """Refuses two rows with the same name (per package or project) with a message instead of a database error."""

    def clean(self):
        super().clean()
        names = [
            form.cleaned_data["name"]
            for form in self.forms
            if getattr(form, "cleaned_data", None)
            and not form.cleaned_data.get("DELETE")
            and form.cleaned_data.get("name")
        ]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise forms.ValidationError(f"{', '.join(duplicates)} appears twice; names must be unique here.")
