import pytest

from tests.factories import make_package, seed_files


@pytest.fixture
def seed_package(db):
    return make_package("seed_package", seed_files())
