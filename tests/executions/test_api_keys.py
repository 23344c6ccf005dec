"""API keys: issued once, stored hashed, revocable, last use recorded. (Scopes and projects:
tests/security/test_api_access.py.)"""

import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from executions.models import ALL_API_SCOPES, ApiKey

pytestmark = pytest.mark.django_db


def test_an_issued_key_is_stored_only_as_its_hash_and_authenticates():
    api_key, key = ApiKey.issue("billing system")

    stored = ApiKey.objects.get(pk=api_key.pk)
    assert key.startswith("exk_") and len(key) > 40
    assert key not in {stored.key_hash, stored.hint, stored.name}
    assert stored.key_hash == ApiKey.hash(key) and key.startswith(stored.hint)
    assert stored.last_used_at is None
    assert ApiKey.authenticate(key) == api_key
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at is not None


def test_unknown_and_revoked_keys_are_refused():
    api_key, key = ApiKey.issue("old integration")
    assert ApiKey.authenticate(key + "x") is None
    assert ApiKey.authenticate("") is None

    api_key.revoke()

    assert ApiKey.authenticate(key) is None
    assert not ApiKey.objects.get(pk=api_key.pk).is_active


def test_create_api_key_prints_a_working_key_once():
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "ci pipeline", stdout=out, stderr=err)

    key = out.getvalue().strip()
    api_key = ApiKey.authenticate(key)
    assert (api_key.name, api_key.project, api_key.scopes) == ("ci pipeline", None, ALL_API_SCOPES)  # as before
    assert key not in err.getvalue()


def test_the_admin_shows_a_new_key_once_and_never_again(admin_client):
    response = admin_client.post(reverse("admin:executions_apikey_add"), {"name": "events from CRM"})

    assert response.status_code == 200
    api_key = ApiKey.objects.get(name="events from CRM")
    key = response.context["key"]
    assert key in response.content.decode()
    assert ApiKey.authenticate(key) == api_key
    assert api_key.created_by.username == "admin"
    for page in (reverse("admin:executions_apikey_changelist"),
                 reverse("admin:executions_apikey_change", args=[api_key.pk])):  # fmt: skip
        content = admin_client.get(page).content.decode()
        assert api_key.hint in content and key not in content


def test_the_admin_revokes_keys(admin_client):
    api_key, key = ApiKey.issue("leaked")

    admin_client.post(
        reverse("admin:executions_apikey_changelist"), {"action": "revoke", "_selected_action": [api_key.pk]}
    )

    assert ApiKey.authenticate(key) is None
    revoked_at = ApiKey.objects.get(pk=api_key.pk).revoked_at
    listing = admin_client.get(reverse("admin:executions_apikey_changelist")).content.decode()
    assert f"revoked {revoked_at:%Y-%m-%d %H:%M}" in listing
