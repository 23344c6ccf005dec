"""Write-only secret forms: a value goes in, and is never rendered again (not even masked into the page)."""

from django import forms

from .models import Secret, SecretScope


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
