"""The HTTP API, FX Event Bridge compatible: POST /fx/events, GET /fx/executions/<id>, GET /fx/cid/<cid>; and
Sync Now for Git repositories: POST /fx/git/repositories/<id>/sync, GET /fx/git/repositories/<id>.

Authentication: an `X-API-KEY` header holding a key from the admin (API keys) or `manage.py create_api_key`.
Each endpoint needs its scope on the key (`events:send`, `executions:read`, `git:sync`): without it, 403. A project
key reaches only its project: another project's execution, chain or repository answers 404 exactly like a missing
one, and its events start only its project's packages. A platform key reaches every project.
The OpenAPI schema is served at /fx/openapi.json and browsable at /fx/docs. Errors answer `{"detail": "..."}`
with a 4xx status and a message saying what is wrong; 429 with `Retry-After` when the key made more requests than
its rate limit allows; 503 with `Retry-After` when the database or the message broker is unreachable for a moment
(try again), and 500 `{"detail": "internal error"}` for anything unexpected.
"""

import json

from django.shortcuts import render
from ninja import NinjaAPI, Swagger

from executions.api import EVENT_SCHEMAS
from executions.api import router as executions_router
from packages.git_api import router as git_router

from .api_auth import ApiKeyAuth
from .api_rate import RateLimited

# The module's docstring above is the API's description in the OpenAPI document (/fx/openapi.json): what a
# client reads first, so it covers every router mounted below.


class ExecutorAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """Add the two event shapes POST /events reads by hand (to word its own errors) to the components."""
        schema = super().get_openapi_schema(*args, **kwargs)
        components = schema["components"].setdefault("schemas", {})
        for model in EVENT_SCHEMAS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        return schema


class OfflineSwagger(Swagger):
    """Swagger UI from ninja's bundled files rather than a CDN (settings.NINJA_DIR says why ninja is not an
    installed app, which is what ninja checks to choose)."""

    def render_page(self, request, api, **kwargs):
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        context = {"swagger_settings": json.dumps(self.settings, indent=1), "api": api, "add_csrf": False}
        return render(request, self.template, context)


api = ExecutorAPI(
    title="Executor API",
    version="1",
    description=__doc__,
    auth=ApiKeyAuth(),
    urls_namespace="fx",
    docs=OfflineSwagger(),
)
# Mounted in this order so that the OpenAPI document lists the paths as it always has: events and executions, then
# Git. Both routers inherit the key auth above; each endpoint checks its own scope (executor_project/api_auth.py).
api.add_router("", executions_router)
api.add_router("", git_router)


@api.exception_handler(RateLimited)
def rate_limited(request, exc: RateLimited):
    response = api.create_response(request, {"detail": exc.message}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(Exception)
def unexpected(request, exc: Exception):
    """Handed on to Django, so that executor_project/errors.py answers: 503 for an unreachable database or broker,
    else JSON 500 `{"detail": "internal error"}` (in DEBUG, ninja itself would answer with the traceback)."""
    raise exc
