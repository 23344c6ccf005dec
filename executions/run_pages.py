"""The pages that start a run with parameters a person fills in: a package's run form (its parameters.json) and
"Re-run with edited parameters" of an execution (that form, or the parameters as JSON when there is none)."""

from django import forms
from django.contrib import messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from packages import access
from packages.access import Action
from packages.models import Package
from packages.run_forms import ParametersError, RunForm, parameter_fields

from .models import Execution, TriggerType
from .queueing import admin_message
from .saved_runs import rerun
from .services import TriggerRefused, trigger_execution


class ParametersForm(forms.Form):
    """For packages without parameters.json: the run's argv[1] keys as a JSON object."""

    parameters = forms.JSONField(
        initial=dict,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 80}),
        help_text="A JSON object: each key reaches the scripts as a top-level argv[1] key.",
    )

    def clean_parameters(self):
        value = self.cleaned_data["parameters"]
        if not isinstance(value, dict):
            raise forms.ValidationError('Enter a JSON object, e.g. {"region": "eu"}.')
        return value

    def run_values(self) -> tuple[dict, dict[str, bytes]]:
        return self.cleaned_data["parameters"], {}


def run_form_page(request, admin_site, package: Package, *, source: Execution | None = None):
    """GET: the form (pre-filled from `source`); POST: start the run and show the package's executions.

    Needs RUN on the package: a package of another project is not there (404); one the user may only see
    answers 403, for GET too, so nothing of the form suggests otherwise."""
    access.require(request.user, Action.RUN, package, f"package {package.pk}")
    back = _page_of(source or package)
    try:
        specs = parameter_fields(package)
    except ParametersError as exc:
        messages.error(request, f"Cannot show the run form: {exc}")
        return HttpResponseRedirect(back)
    initial = dict(source.params) if source else {}
    data, files = (request.POST, request.FILES) if request.method == "POST" else (None, None)
    if specs is None:
        form = ParametersForm(data, initial={"parameters": initial})
    else:
        form = RunForm(specs, data, files, initial=initial)
    form.required_css_class = "required"  # the label gets the class: run_form.html marks it with an asterisk
    if form.is_valid():
        params, run_files = form.run_values()
        try:
            if source:
                execution = rerun(source, user=request.user, params=params, files=run_files)
            else:
                execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params,
                                              user=request.user, files=run_files)  # fmt: skip
        except TriggerRefused as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(back)
        messages.add_message(request, *admin_message(execution, f"Execution {execution.short_id} of {package.name}"))
        return HttpResponseRedirect(reverse("admin:executions_execution_change", args=[execution.pk]))
    title = f"Re-run {source.name or source.short_id} with edited parameters" if source else f"Run {package.name}"
    context = {**admin_site.each_context(request), "title": title, "form": form, "package": package,
               "source": source, "back": back, "opts": Execution._meta}  # fmt: skip
    return TemplateResponse(request, "admin/executions/run_form.html", context)


def _page_of(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
