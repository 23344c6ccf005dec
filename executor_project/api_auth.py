"""Who may call the /fx/ API, shared by every router mounted on it (executor_project/api.py): the `X-API-KEY`
check with the key's rate limit (executor_project/api_rate.py), the per-endpoint scope check, the narrowing of a
query to the key's project, and the error body."""

from django.db.models import QuerySet
from ninja import Schema
from ninja.errors import HttpError
from ninja.security import APIKeyHeader

from executions.models import ApiKey, ApiScope

from . import api_rate


class ApiKeyAuth(APIKeyHeader):
    param_name = "X-API-KEY"

    def authenticate(self, request, key: str | None) -> ApiKey:
        if not key:
            raise HttpError(401, "Missing X-API-KEY header: issue a key in the admin (API keys) or with "
                                 "`manage.py create_api_key NAME`.")  # fmt: skip
        api_key = ApiKey.authenticate(key)
        if api_key is None:
            raise HttpError(401, "Unknown or revoked API key.")
        api_rate.check(request, api_key.key_hash, api_key.rate_limit)
        return api_key


SCOPE_WORDS = {
    ApiScope.EVENTS_SEND: "send events",
    ApiScope.EXECUTIONS_READ: "read executions",
    ApiScope.GIT_SYNC: "sync or read Git repositories",
}


def key_with(request, scope: ApiScope) -> ApiKey:
    """The request's key, if it carries `scope`; else 403 naming the scope (before the request is looked at)."""
    api_key: ApiKey = request.auth
    if not api_key.allows(scope):
        raise HttpError(403, f"This API key may not {SCOPE_WORDS[scope]} (scope {scope.value}).")
    return api_key


def within_reach(queryset: QuerySet, api_key: ApiKey, path: str) -> QuerySet:
    """`queryset` narrowed to the key's project (through `path`); a platform key reaches everything."""
    if api_key.project_id is None:
        return queryset
    return queryset.filter(**{path: api_key.project_id})


# Every 4xx answer's body; 5xx answers come from executor_project/errors.py in the same shape. (No docstring: it
# would become the schema's description in the published OpenAPI document.)
class Error(Schema):
    detail: str
