"""Admin forms: a package's scripts are uploaded as files and stored in the database."""

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Max

from executor_project import bounded_json

from .models import Script, file_name_validator

JSON_OBJECT_FILES = ("config.json", "parameters.json", "manifest.json")


def json_object(data: bytes, file_name: str) -> dict:
    """Parse an uploaded JSON file that must hold an object; the error never quotes the content."""
    try:
        value = bounded_json.loads(data)
    except bounded_json.JSONRejected as exc:
        raise ValidationError(f"{file_name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{file_name} must hold a JSON object.")
    return value


def base_name(upload) -> str:
    """Browsers send a bare name; strip any directory part some clients include."""
    return upload.name.replace("\\", "/").rsplit("/", 1)[-1]


class ScriptInlineForm(forms.ModelForm):
    upload = forms.FileField(required=False, label="File", help_text="Upload a new file, or a new version of this one.")
    position = forms.IntegerField(required=False, min_value=0, help_text="Blank: after the others.")

    class Meta:
        model = Script
        fields = ["upload", "position"]

    def clean_upload(self):
        upload = self.cleaned_data.get("upload")
        if upload is None:
            if self.instance.pk is None and self.has_changed():
                raise ValidationError("Choose a file to upload.")
            return None
        limit = settings.EXECUTOR_MAX_SCRIPT_BYTES
        if upload.size > limit:
            raise ValidationError(f"{upload.name} is {upload.size} bytes; the limit is {limit} bytes.")
        file_name = base_name(upload)
        file_name_validator(file_name)
        if file_name == "secrets.json":
            raise ValidationError("secrets.json is never stored as a file: use “Import secrets.json” above.")
        if file_name in JSON_OBJECT_FILES:
            upload.seek(0)
            json_object(upload.read(), file_name)
            upload.seek(0)
        if self.instance.pk and file_name != self.instance.file_name:
            raise ValidationError(f"This row holds {self.instance.file_name}; add {file_name} as a new script instead.")
        return upload

    def save(self, commit=True):
        upload = self.cleaned_data.get("upload")
        if upload is not None:
            self.instance.file_name = base_name(upload)
            self.instance.content = upload.read()
        if self.cleaned_data.get("position") is None:
            self.instance.position = self._next_position()
        return super().save(commit)

    def _next_position(self) -> int:
        if self.instance.pk:  # a cleared position on an existing row keeps the one it had
            return self.initial["position"]
        highest = Script.objects.filter(package=self.instance.package).aggregate(top=Max("position"))["top"]
        return 1 if highest is None else highest + 1


class ScriptInlineFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        seen: set[str] = set()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or form.cleaned_data.get("DELETE"):
                continue
            upload = form.cleaned_data.get("upload")
            name = base_name(upload) if upload else form.instance.file_name
            if not name:
                continue
            if name in seen:
                raise ValidationError(f"{name} appears twice; a package holds each file name once.")
            seen.add(name)
