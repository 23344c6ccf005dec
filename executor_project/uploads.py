"""Request bodies are bounded before they are read (README: Security model).

Three limits, each checked as early as it can be:

- `Content-Length` itself: a value that is not a number of bytes is refused with 400, and a body sent without
  one (`Transfer-Encoding: chunked`) with 411. Django under WSGI reads a request body only up to its
  Content-Length, so a chunked body would otherwise reach the view as an empty form: a run started without its
  file, or a form saved without its fields.
- a form with files (multipart/form-data) larger than the largest file a form accepts plus FORM_FIELDS_ALLOWANCE
  for its other fields is refused with 413 from its Content-Length, before a byte of it is read;
- a file that grows past that limit while it streams in stops the upload (LimitedUploadHandler): 413 naming the
  file, and nothing of it is kept.

The forms check their own, possibly smaller, limit on `file.size` (run-form files and secrets.json:
EXECUTOR_MAX_UPLOAD_BYTES; scripts: EXECUTOR_MAX_SCRIPT_BYTES). Other request bodies (JSON, url-encoded forms)
are capped by Django's DATA_UPLOAD_MAX_MEMORY_SIZE and, for events, EXECUTOR_EVENT_MAX_BYTES.

Why a middleware rather than a handler set in the view: CsrfViewMiddleware reads request.POST for every form it
checks, before any view runs, and upload handlers cannot be changed once the body has been parsed. So the
handler is in FILE_UPLOAD_HANDLERS, and RequestLimitsMiddleware (listed before CsrfViewMiddleware) parses the
form itself and answers 413 before a view, or the CSRF check, can see a partial one.
"""

import re

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

KiB = 1024
MiB = 1024 * KiB
# Room for a form's fields besides its files (CSRF token, parameters, a package's inline rows).
FORM_FIELDS_ALLOWANCE = 1 * MiB
_DIGITS = re.compile(r"[0-9]+")
_REFUSAL = "_executor_upload_refusal"


class BadLength(ValueError):
    """A Content-Length that is not a number of bytes."""


def size_text(size: int) -> str:
    """`10 MiB`, `1 KiB`, `512 bytes`, `30.2 MiB`: for messages about limits and sizes."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            return f"{size // unit} {name}" if size % unit == 0 else f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def declared_length(meta: dict) -> int | None:
    """The request's Content-Length in bytes, None when it sent none. Raises BadLength for anything but digits
    (Django would read `abc` as 0, or fail on it with a ValueError, depending on who reads the body first)."""
    raw = meta.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    if not _DIGITS.fullmatch(raw):
        shown = raw[:40] + ("…" if len(raw) > 40 else "")
        raise BadLength(f"Content-Length {shown!r} is not a number of bytes.")
    return int(raw) if len(raw) < 20 else 10**20  # more digits than any body could have: just "too large"


def file_limit() -> tuple[int, str]:
    """The largest file any form accepts, and the setting that says so. Each form checks its own limit on top."""
    upload, script = settings.EXECUTOR_MAX_UPLOAD_BYTES, settings.EXECUTOR_MAX_SCRIPT_BYTES
    return (upload, "EXECUTOR_MAX_UPLOAD_BYTES") if upload >= script else (script, "EXECUTOR_MAX_SCRIPT_BYTES")


def too_large(name: str, limit: int, setting: str) -> str:
    return f"{name} is larger than {size_text(limit)} ({setting})."


def upload_refusal(request: HttpRequest) -> str | None:
    """Why LimitedUploadHandler stopped this request's upload, if it did."""
    return getattr(request, _REFUSAL, None)


class LimitedUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: passes chunks on to Django's handlers until a file goes past file_limit(),
    then stops the upload without reading the rest of the body and records why (upload_refusal)."""

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.limit, self.setting = file_limit()
        if content_length is not None and content_length > self.limit:  # the part says so itself
            self._refuse()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self._refuse()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) builds the file

    def _refuse(self):
        setattr(self.request, _REFUSAL, too_large(self.file_name, self.limit, self.setting))
        # connection_reset: Django does not read (exhaust) the rest of the body; the server closes the connection.
        raise StopUpload(connection_reset=True)


class RequestLimitsMiddleware:
    """Answers 400 / 411 / 413 before a view or the CSRF check reads a body it should not (see the module
    docstring). Must come before django.middleware.csrf.CsrfViewMiddleware in MIDDLEWARE."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> HttpResponse | None:
        try:
            length = declared_length(request.META)
        except BadLength as exc:
            return JsonResponse({"detail": str(exc)}, status=400)
        if request.META.get("HTTP_TRANSFER_ENCODING"):
            # Django would read nothing of a chunked body (or, with a Content-Length as well, misread it).
            return JsonResponse({"detail": "Send the body with a Content-Length header and no Transfer-Encoding: "
                                           "a chunked body is not read here."}, status=411)  # fmt: skip
        if request.content_type != "multipart/form-data" or not length:
            return None
        file_bytes, setting = file_limit()
        if length > file_bytes + FORM_FIELDS_ALLOWANCE:
            return _refused(request, f"The form is {size_text(length)}: files may be at most "
                                     f"{size_text(file_bytes)} ({setting}).")  # fmt: skip
        if getattr(view_func, "csrf_exempt", False):
            return None  # the API and the webhook read their own bodies (and no multipart one)
        request.FILES  # noqa: B018  parse now, under LimitedUploadHandler, before CSRF or the view sees the form
        refusal = upload_refusal(request)
        return _refused(request, refusal) if refusal else None


def _refused(request: HttpRequest, message: str) -> HttpResponse:
    """413: in the admin a page that says why (the browser's Back keeps what was typed), elsewhere JSON."""
    match = request.resolver_match
    if match is None or match.namespace != "admin":
        return JsonResponse({"detail": message}, status=413)
    from django.contrib import admin  # here: forms that workers import (run_forms) use this module's messages

    context = {**admin.site.each_context(request), "title": "Upload refused", "message": message,
               "back": request.get_full_path()}  # fmt: skip
    return TemplateResponse(request, "admin/upload_refused.html", context, status=413)
