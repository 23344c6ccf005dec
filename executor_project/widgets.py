"""Form widgets every app's admin pages share."""

from django import forms
from django.utils.html import format_html, format_html_join


class SuggestingInput(forms.TextInput):
    """A text box that offers its field's choices as you type (an HTML datalist): a time zone is found by typing
    "Berl", not by scrolling a select of 600 zones. The field still accepts only one of its choices.

    The datalist is written here rather than by a template: Django's form renderer looks for widget templates in
    apps only, and this module belongs to none."""

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["attrs"]["list"] = f"{context['widget']['attrs'].get('id', name)}_choices"
        context["widget"]["suggestions"] = [choice for choice, _ in getattr(self, "choices", []) if choice]
        return context

    def render(self, name, value, attrs=None, renderer=None):
        context = self.get_context(name, value, attrs)
        suggestions = ((choice,) for choice in context["widget"]["suggestions"])
        options = format_html_join("", '<option value="{}">', suggestions)
        datalist = format_html('<datalist id="{}">{}</datalist>', context["widget"]["attrs"]["list"], options)
        return self._render(self.template_name, context, renderer) + datalist

    def format_value(self, value):
        return str(value) if value else ""  # a ZoneInfo shows as its key, "Europe/Berlin"
