"""Admin forms: a package's scripts are uploaded as files and stored in the database."""

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Max
from django.utils.functional import cached_property

from executor_project import bounded_json

from . import staged_uploads
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


class KeptFileInput(forms.FileInput):
    """A file input that says which file a failed save kept for this row (`kept`, set by keep_upload)."""

    template_name = "admin/packages/widgets/kept_file_input.html"
    kept = ""

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["kept"] = self.kept
        return context


class ScriptInlineForm(forms.ModelForm):
    upload = forms.FileField(
        required=False,
        label="File",
        widget=KeptFileInput,
        help_text="Upload a new file, or a new version of this one.",
    )
    position = forms.IntegerField(required=False, min_value=0, help_text="Blank: after the others.")
    # The token of a file a failed save kept (packages/staged_uploads.py): a resubmit saves it unless a new file
    # is chosen in its place.
    staged = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Script
        fields = ["upload", "position", "staged"]

    def __init__(self, *args, owner=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner  # whose kept files this form may use: the person posting it
        self.kept = None  # the StagedUpload this row's file came from, consumed by save()

    @cached_property
    def changed_data(self) -> list[str]:
        """A row that carries a kept file has a new upload: what the audit log and the admin's history record."""
        return list(dict.fromkeys("upload" if name == "staged" else name for name in super().changed_data))

    def clean_upload(self):
        upload = self.cleaned_data.get("upload") or self._kept_upload()
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

    def _kept_upload(self):
        """The file an earlier failed save kept for this row, as an upload (so every check above applies to it
        again), or None if the row carries no token."""
        token = self["staged"].data
        if not token:
            return None
        self.kept = staged_uploads.load(self.owner, token)
        return SimpleUploadedFile(self.kept.file_name, bytes(self.kept.content))

    def keep_upload(self) -> None:
        """After a failed save: keep this row's valid file on the server and put its token in the re-rendered
        row, or drop a token whose file was refused or replaced. Never raises for a form without a file."""
        upload = getattr(self, "cleaned_data", {}).get("upload")
        token = ""
        if upload is not None and self.owner is not None:
            if self.kept is None:
                upload.seek(0)
                self.kept, token = staged_uploads.stage(self.owner, base_name(upload), upload.read())
            else:
                token = self["staged"].data
            self.fields["upload"].widget.kept = staged_uploads.describe(self.kept)
        if token != (self["staged"].data or ""):
            self.data = self.data.copy()
            self.data[self.add_prefix("staged")] = token

    def save(self, commit=True):
        upload = self.cleaned_data.get("upload")
        if upload is not None:
            self.instance.file_name = base_name(upload)
            self.instance.content = upload.read()
        if self.cleaned_data.get("position") is None:
            self.instance.position = self._next_position()
        saved = super().save(commit)
        if self.kept is not None:
            self.kept.delete()  # in the save's transaction: the file is the script's now
        return saved

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

    def keep_uploads(self) -> None:
        """After a failed save, keep every valid file chosen in the form (ScriptInlineForm.keep_upload)."""
        for form in self.forms:
            form.keep_upload()
