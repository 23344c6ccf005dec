"""What a browser would submit: the fields of a rendered admin form, read from its HTML (standard library only).

Access tests post the form a page really renders (read as a superuser, who sees every field and inline), changed
where the test says, instead of a hand-written dictionary that drifts from the admin: an inline's prefix, its
management form and a new field all come from the page itself.
"""

from html.parser import HTMLParser

EMPTY_FORM = "__prefix__"  # the template row Django renders for "Add another"


class _FormFields(HTMLParser):
    def __init__(self, form_id: str | None):
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.in_form = form_id is None
        self.fields: list[tuple[str, str]] = []
        self.names: set[str] = set()  # every field name seen, template rows included
        self._select: dict | None = None
        self._option: dict | None = None
        self._textarea: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and self.form_id is not None:
            self.in_form = attributes.get("id") == self.form_id
        if not self.in_form:
            return
        if tag == "input":
            self._input(attributes)
        elif tag == "select":
            self._select = {"name": attributes.get("name"), "multiple": "multiple" in attributes, "options": []}
        elif tag == "option" and self._select is not None:
            self._option = {"value": attributes.get("value"), "selected": "selected" in attributes, "text": ""}
            self._select["options"].append(self._option)
        elif tag == "textarea":
            self._textarea = {"name": attributes.get("name"), "text": ""}

    def handle_data(self, data):
        if self._option is not None:
            self._option["text"] += data
        if self._textarea is not None:
            self._textarea["text"] += data

    def handle_endtag(self, tag):
        if tag == "form" and self.form_id is not None:
            self.in_form = False
        elif tag == "option":
            self._option = None
        elif tag == "select" and self._select is not None:
            self._close_select(self._select)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self._add(self._textarea["name"], self._textarea["text"].removeprefix("\n"))
            self._textarea = None

    def _input(self, attributes: dict) -> None:
        kind = attributes.get("type", "text")
        name = attributes.get("name")
        if kind in {"submit", "button", "image", "reset", "file"} or not name:
            if name and kind == "file":
                self.names.add(name)
            return
        if kind in {"checkbox", "radio"} and "checked" not in attributes:
            self.names.add(name)
            return
        self._add(name, attributes.get("value", "on" if kind in {"checkbox", "radio"} else ""))

    def _close_select(self, select: dict) -> None:
        options = select["options"]
        chosen = [o for o in options if o["selected"]]
        if not select["multiple"] and not chosen and options:
            chosen = options[:1]  # a single select with nothing marked submits its first option
        for option in chosen:
            value = option["value"] if option["value"] is not None else option["text"].strip()
            self._add(select["name"], value)
        self.names.add(select["name"])

    def _add(self, name: str | None, value: str) -> None:
        if not name:
            return
        self.names.add(name)
        if EMPTY_FORM not in name:
            self.fields.append((name, value))


class AdminForm:
    """The submittable fields of one form on a page, as a mutable mapping of name -> value (lists for multiple
    values), with helpers for inline formsets."""

    def __init__(self, html: str, form_id: str | None = None):
        parser = _FormFields(form_id)
        parser.feed(html)
        self.names = parser.names
        self.data: dict[str, str | list[str]] = {}
        for name, value in parser.fields:
            if name in self.data:
                previous = self.data[name]
                self.data[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                self.data[name] = value
        self.data.pop("csrfmiddlewaretoken", None)

    def prefix_with(self, field: str) -> str:
        """The prefix of the inline formset whose rows have `field` (found in its template row)."""
        for name in sorted(self.names):
            if name.endswith(f"-{EMPTY_FORM}-{field}"):
                return name.removesuffix(f"-{EMPTY_FORM}-{field}")
        raise AssertionError(f"no inline with a {field!r} field on this page: {sorted(self.names)}")

    def add_row(self, prefix: str, **fields) -> int:
        """Fill a new row of inline `prefix` (the first extra row, adding one if none is rendered); its index."""
        total, initial = int(self.data[f"{prefix}-TOTAL_FORMS"]), int(self.data[f"{prefix}-INITIAL_FORMS"])
        index = initial
        self.data[f"{prefix}-TOTAL_FORMS"] = str(max(total, initial + 1))
        for name, value in fields.items():
            self.data[f"{prefix}-{index}-{name}"] = value
        return index

    def post_data(self, **changes) -> dict:
        return {**self.data, **changes}


def admin_form(client, url: str, form_id: str | None = None) -> AdminForm:
    """The form `client` is shown at `url` (the admin's change forms have the id <model>_form)."""
    response = client.get(url)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    return AdminForm(response.content.decode(), form_id)
