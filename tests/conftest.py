import pytest

from tests.factories import make_package, seed_files


@pytest.fixture
def seed_package(db):
    return make_package("seed_package", seed_files())


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    """Production serves hashed static files collected at build time; tests render pages without collecting."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
