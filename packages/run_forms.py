"""Run forms: a package's `parameters.json` (FX) as a Django form; the values become top-level argv[1] keys.

`{"fields": [{"type", "name", "label", "required", "description", "default", "placeholder", ...}]}` with the FX
types text, textarea, int (min, max), float (min, max, step), select and radio (choices: [{title, value}]),
multiselect (a list) and file. A choice field's `default` names a choice's value, or its title when exactly one
choice has that title (parse_parameters turns it into the value; any other default is refused). An uploaded file
is given to the run: the worker writes it at `_uploads/<field>/<file name>` in the scripts' working directory, and
that relative path is the field's value. A file may be at most EXECUTOR_MAX_UPLOAD_BYTES
(executor_project/uploads.py refuses a larger request before it is read; the field checks the file's size again).
"""

import re

from django import forms
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.uploadedfile import UploadedFile
from django.utils.text import get_valid_filename

from executor_project import bounded_json
from executor_project.uploads import too_large

from .models import PARAMETERS_FILE, Package

UPLOAD_DIR = "_uploads"
TYPES = {"text", "textarea", "int", "float", "select", "radio", "multiselect", "file"}
# `_uploads/<field>/<file name>` must fit ExecutionFile.path (300 characters).
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
MAX_FILE_NAME = 200


class ParametersError(ValueError):
    """parameters.json cannot be turned into a form; the message says where."""


def parameter_fields(package: Package) -> list[dict] | None:
    """The package's form fields, or None when it has no parameters.json. Raises ParametersError."""
    script = package.scripts.filter(file_name=PARAMETERS_FILE).first()
    return None if script is None else parse_parameters(bytes(script.content))


def parse_parameters(content: bytes) -> list[dict]:
    try:
        document = bounded_json.loads(content)
    except bounded_json.JSONRejected as exc:
        raise ParametersError(f"parameters.json is not valid JSON: {exc}") from None
    fields = document.get("fields") if isinstance(document, dict) else None
    if not isinstance(fields, list):
        raise ParametersError('parameters.json must be an object {"fields": [...]}.')
    names, parsed = set(), []
    for number, spec in enumerate(fields, start=1):
        where = f"parameters.json field {number}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise ParametersError(f"{where}: type must be one of {', '.join(sorted(TYPES))}.")
        if not isinstance(spec.get("name"), str) or not _NAME.match(spec["name"]) or spec["name"] in names:
            raise ParametersError(f"{where}: name must be a unique identifier (letters, digits, _; at most 64).")
        if spec["type"] in ("select", "radio", "multiselect"):
            if not _valid_choices(spec.get("choices")):
                raise ParametersError(f"{where} ({spec['name']}): choices must be a list of {{title, value}}.")
            spec = _with_default_as_value(spec, f"{where} ({spec['name']})")
        names.add(spec["name"])
        parsed.append(spec)
    return parsed


def _valid_choices(choices) -> bool:
    return isinstance(choices, list) and all(isinstance(c, dict) and "value" in c for c in choices)


def _with_default_as_value(spec: dict, where: str) -> dict:
    """The field with its `default` naming a choice's value. FX files often give the title the form shows
    instead; left as it is, the form would show no choice selected and submit null. A title that exactly one
    choice has means that choice; any other default is an error, so the import reports it."""
    default = spec.get("default")
    if default in (None, "", []):
        return spec
    wanted = default if spec["type"] == "multiselect" and isinstance(default, list) else [default]
    values = [_choice_value(spec["choices"], item, where) for item in wanted]
    return {**spec, "default": values if spec["type"] == "multiselect" else values[0]}


def _choice_value(choices: list[dict], default, where: str):
    """The value of the choice `default` names: its value (compared as text, as the form does) or its title."""
    for choice in choices:
        if str(choice["value"]) == str(default):
            return choice["value"]
    titled = [choice["value"] for choice in choices if choice.get("title") == default]
    if len(titled) == 1:
        return titled[0]
    values = ", ".join(str(choice["value"]) for choice in choices)
    if titled:
        raise ParametersError(f"{where}: default {default!r} is the title of {len(titled)} choices: give a "
                              f"value instead (values: {values}).")  # fmt: skip
    raise ParametersError(f"{where}: default {default!r} is neither a choice's value nor its title (values: "
                          f"{values}).")  # fmt: skip


class RunForm(forms.Form):
    """The fields of parameters.json; `initial` pre-fills them (a saved run's or an execution's parameters)."""

    def __init__(self, specs: list[dict], *args, **kwargs):
        super().__init__(*args, **kwargs)
        for spec in specs:
            self.fields[spec["name"]] = _form_field(spec, kwargs.get("initial") or {})

    def run_values(self) -> tuple[dict, dict[str, bytes]]:
        """(values for argv[1], files for the run by path). A file field left empty keeps its initial value."""
        params, files = {}, {}
        for name, value in self.cleaned_data.items():
            if isinstance(value, UploadedFile):
                path = f"{UPLOAD_DIR}/{name}/{get_valid_filename(value.name)}"
                params[name], files[path] = path, value.read()
            elif value in (None, "") and isinstance(self.fields[name], forms.FileField):
                if self.initial.get(name):
                    params[name] = self.initial[name]
            else:
                params[name] = value
        return params, files


def _form_field(spec: dict, initial: dict) -> forms.Field:
    kind = spec["type"]
    options = {
        "label": spec.get("label") or spec["name"],
        "required": bool(spec.get("required", False)),
        "help_text": spec.get("description", ""),
        "initial": initial.get(spec["name"], spec.get("default")),
    }
    placeholder = {"placeholder": spec["placeholder"]} if spec.get("placeholder") else {}
    if kind == "text":
        return forms.CharField(widget=forms.TextInput(attrs=placeholder), **options)
    if kind == "textarea":
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 4, **placeholder}), **options)
    if kind == "int":
        return forms.IntegerField(min_value=spec.get("min"), max_value=spec.get("max"), **options)
    if kind == "float":
        step = {"step": spec["step"]} if spec.get("step") else {"step": "any"}
        return forms.FloatField(min_value=spec.get("min"), max_value=spec.get("max"),
                                widget=forms.NumberInput(attrs=step), **options)  # fmt: skip
    if kind == "file":
        if initial.get(spec["name"]):  # a re-run keeps the earlier file unless a new one is chosen
            options["required"] = False
            options["help_text"] = f"{options['help_text']} Now: {initial[spec['name']]}".strip()
        return forms.FileField(max_length=MAX_FILE_NAME, validators=[_within_upload_limit, _usable_name], **options)
    return _choice_field(spec, options)


def _within_upload_limit(upload: UploadedFile) -> None:
    """On the size the upload handler counted, before anything reads the file."""
    limit = settings.EXECUTOR_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise forms.ValidationError(too_large(upload.name, limit, "EXECUTOR_MAX_UPLOAD_BYTES"))


def _usable_name(upload: UploadedFile) -> None:
    try:
        get_valid_filename(upload.name)
    except SuspiciousFileOperation:
        raise forms.ValidationError("The file name has no letters or digits: rename the file.") from None


def _choice_field(spec: dict, options: dict) -> forms.Field:
    by_text = {str(choice["value"]): choice["value"] for choice in spec["choices"]}
    choices = [(str(c["value"]), c.get("title") or str(c["value"])) for c in spec["choices"]]
    coerce = by_text.__getitem__  # the value as parameters.json types it (a number stays a number)
    if spec["type"] == "multiselect":
        options["initial"] = [str(value) for value in options["initial"] or []]
        return forms.TypedMultipleChoiceField(choices=choices, coerce=coerce, **options)
    if options["initial"] is not None:
        options["initial"] = str(options["initial"])
    if not options["required"]:
        choices = [("", "—"), *choices]
    widget = forms.RadioSelect if spec["type"] == "radio" else forms.Select
    return forms.TypedChoiceField(choices=choices, coerce=coerce, empty_value=None, widget=widget, **options)
