"""The coloured status badge of the admin's lists and pages, styled in templates/admin/base_site.html.

Here, not in one app's admin, because executions (runs, steps, events) and packages (Git repositories) both show
it, and packages must not import executions.
"""

from django.utils.html import format_html


def status_badge(status: str, label: str) -> str:
    """`label` in the colour of `status` (a CSS class executor-<status>)."""
    return format_html('<span class="executor-badge executor-{}">{}</span>', status, label)
