"""The role table itself (packages/access.py): who may do what, on which object, and what querysets they see.

The admin and the API are proven against this table in tests/security/test_access_matrix.py; here the table and
its helpers are checked on their own, with Alice (owner of Sales), Bob (viewer of Sales) and Carol (runner of HR).
"""

import pytest
from django.contrib.auth.models import AnonymousUser

from executions.models import ApiKey, Execution, ExecutionStep, TriggerEvent
from packages import access
from packages.access import Action
from packages.models import Package, Project, Secret, SecretScope
from tests.factories import add_secret, make_member, make_package, make_staff

pytestmark = pytest.mark.django_db

# What each role may do, written out rather than derived from access.ALLOWED, so a change to the table fails here.
EXPECTED = {
    "viewer": {Action.VIEW},
    "runner": {Action.VIEW, Action.RUN},
    "maintainer": {Action.VIEW, Action.RUN, Action.EDIT},
    "owner": {Action.VIEW, Action.RUN, Action.EDIT, Action.MANAGE},
}


@pytest.fixture
def sales():
    return Project.objects.create(name="Sales")


@pytest.fixture
def hr():
    return Project.objects.create(name="HR")


@pytest.fixture
def orders(sales):
    return make_package("orders", {"main.py": "print(1)"}, project=sales)


@pytest.fixture
def payroll(hr):
    return make_package("payroll", {"main.py": "print(2)"}, project=hr)


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="password")


@pytest.mark.parametrize("role", list(EXPECTED))
@pytest.mark.parametrize("action", list(Action))
def test_it_allows_each_role_exactly_its_row_of_the_table(role, action, sales, orders, hr, payroll):
    member = make_staff(f"{role}_user")
    make_member(member, sales, role)

    assert access.can(member, action, orders) is (action in EXPECTED[role])
    assert access.can(member, action, sales) is (action in EXPECTED[role])
    assert access.can(member, action, sales.pk) is (action in EXPECTED[role])
    assert access.can(member, action, payroll) is False  # another project: never, whatever the role
    assert access.can(member, action, hr) is False


def test_it_lets_a_superuser_do_everything_including_platform_objects(superuser, orders, payroll):
    platform_package = make_package("loose_package")  # no project: the platform's
    add_secret(name="SMTP_PASSWORD", value="x", scope=SecretScope.PLATFORM)
    platform_secret = Secret.objects.get(name="SMTP_PASSWORD")
    platform_key, _ = ApiKey.issue("everything")

    for obj in (orders, payroll, platform_package, platform_secret, platform_key):
        assert all(access.can(superuser, action, obj) for action in Action)
    assert access.project_ids(superuser, Action.MANAGE) is None
    assert set(access.scoped(Package.objects.all(), superuser)) == {orders, payroll, platform_package}


def test_it_keeps_platform_objects_from_every_member_even_owners(sales, orders):
    owner = make_staff("alice")
    make_member(owner, sales, "owner")
    platform_package = make_package("loose_package")
    add_secret(name="SMTP_PASSWORD", value="x", scope=SecretScope.PLATFORM)
    platform_key, _ = ApiKey.issue("everything")

    for obj in (platform_package, Secret.objects.get(name="SMTP_PASSWORD"), platform_key, None):
        assert not any(access.can(owner, action, obj) for action in Action)
    assert list(access.scoped(Package.objects.all(), owner)) == [orders]


def test_it_lets_inactive_and_anonymous_users_do_nothing(django_user_model, sales, orders):
    former = make_staff("former", is_active=False)
    make_member(former, sales, "owner")
    fallen = django_user_model.objects.create_superuser("fallen", password="password", is_active=False)

    for user in (former, fallen, AnonymousUser()):
        assert not any(access.can(user, action, orders) for action in Action)
        assert not access.can_anywhere(user, Action.VIEW)
        assert access.scoped(Package.objects.all(), user).count() == 0
        assert not access.is_superuser(user)


def test_it_gives_a_staff_user_without_memberships_nothing_whatever_model_permissions_they_hold(orders):
    from django.contrib.auth.models import Permission

    legacy = make_staff("legacy")
    legacy.user_permissions.add(*Permission.objects.filter(codename__in=["run_package", "change_package"]))

    assert not any(access.can(legacy, action, orders) for action in Action)
    assert access.project_ids(legacy, Action.VIEW) == set()


def test_it_lists_the_projects_where_a_user_may_do_an_action(sales, hr):
    carol = make_staff("carol")
    make_member(carol, sales, "viewer")
    make_member(carol, hr, "maintainer")

    assert access.project_ids(carol, Action.VIEW) == {sales.pk, hr.pk}
    assert access.project_ids(carol, Action.EDIT) == {hr.pk}
    assert access.project_ids(carol, Action.MANAGE) == set()
    assert list(access.projects(carol, Action.RUN)) == [hr]
    assert access.can_anywhere(carol, Action.EDIT) and not access.can_anywhere(carol, Action.MANAGE)


def test_it_scopes_querysets_through_a_path(sales, orders, payroll):
    bob = make_staff("bob")
    make_member(bob, sales, "viewer")
    mine = Execution.objects.create(package=orders, trigger_type="manual", correlation_id="a" * 32)
    Execution.objects.create(package=payroll, trigger_type="manual", correlation_id="b" * 32)

    assert list(access.scoped(Execution.objects.all(), bob, Action.VIEW, "package__project")) == [mine]
    assert access.scoped(Execution.objects.all(), bob, Action.RUN, "package__project").count() == 0


def test_it_finds_the_project_of_every_kind_of_object(sales, hr, orders):
    add_secret(orders, name="PACKAGE_TOKEN", value="p")
    add_secret(project=hr, name="PROJECT_TOKEN", value="q", scope=SecretScope.PROJECT)
    execution = Execution.objects.create(package=orders, trigger_type="manual", correlation_id="c" * 32)
    step = ExecutionStep.objects.create(execution=execution, position=1, file_name="main.py")
    key, _ = ApiKey.issue("hr key", project=hr)
    event = TriggerEvent.objects.create(event_id="e1", source="crm", type="t", correlation_id="d" * 32, project=hr,
                                        status="started")  # fmt: skip

    # A package secret has no project of its own: it is its package's (Sales), not the platform's.
    assert access.project_id_of(Secret.objects.get(name="PACKAGE_TOKEN")) == sales.pk
    assert access.project_id_of(Secret.objects.get(name="PROJECT_TOKEN")) == hr.pk
    assert access.project_id_of(orders) == sales.pk
    assert access.project_id_of(execution) == sales.pk
    assert access.project_id_of(step) == sales.pk
    assert access.project_id_of(key) == hr.pk
    assert access.project_id_of(event) == hr.pk
    assert access.project_id_of(sales) == sales.pk
    assert access.project_id_of(make_package("loose")) is None


def test_it_reads_a_users_roles_once_per_user_object(django_assert_num_queries, sales, orders):
    alice = make_staff("alice")
    make_member(alice, sales, "owner")

    with django_assert_num_queries(1):
        for action in Action:
            assert access.can(alice, action, sales.pk)
        assert access.project_ids(alice, Action.RUN) == {sales.pk}
