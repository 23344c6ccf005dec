"""The upgrade to projects with members (packages 0009, executions 0010), run for real: the database is migrated back
to before projects had members, filled the way an older Executor left it, and migrated forward again.

What it must guarantee (README, Upgrading): nobody's access changes silently. Packages without a project land in
"Default"; every active staff user who could do something before becomes a member of every project, with the role
their old model permissions (direct or through a group) gave them; existing API keys stay platform keys with every
scope.
"""

import importlib

import pytest
from django.apps import apps as current_apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from executions.models import ALL_API_SCOPES, ApiKey
from packages import access
from packages.access import Action
from packages.models import Package, Project, ProjectMembership

BEFORE = [("packages", "0008_security"), ("executions", "0009_source_commit")]
# Afterwards the data is read with the current models: forward to the latest migration of each app (0009 and 0010,
# the upgrade under test, included).
AFTER = "latest"
# old model permissions -> the role the upgrade gives, first match wins (the migration's ROLE_BY_PERMISSION)
LEGACY_USERS = {
    "olga_owner": (["change_project", "view_package"], "owner"),
    "max_maintainer": (["add_package"], "maintainer"),
    "mia_maintainer": (["change_package", "run_package"], "maintainer"),
    "rob_runner": (["run_package", "view_execution"], "runner"),
    "vic_viewer": (["view_package"], "viewer"),
    "eve_executions": (["change_execution"], "viewer"),
}


@pytest.fixture
def migrator():
    """A MigrationExecutor on the test database; whatever happens, the database ends at the latest migrations."""
    executor = MigrationExecutor(connection)
    try:
        yield executor
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def migrate(executor: MigrationExecutor, targets):
    executor.loader.build_graph()  # the applied set changed since the executor was made
    if targets == "latest":
        targets = [node for node in executor.loader.graph.leaf_nodes() if node[0] in ("packages", "executions")]
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def legacy_user(old_apps, username: str, codenames: list[str], **fields):
    User, Permission = old_apps.get_model("auth", "User"), old_apps.get_model("auth", "Permission")
    fields.setdefault("is_staff", True)
    user = User.objects.create(username=username, **fields)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def fill_like_an_older_executor(old_apps) -> None:
    """Two packages without a project, one in Sales; users of every kind; one API key."""
    Project, Package = old_apps.get_model("packages", "Project"), old_apps.get_model("packages", "Package")
    Group, Permission = old_apps.get_model("auth", "Group"), old_apps.get_model("auth", "Permission")
    User, ApiKey = old_apps.get_model("auth", "User"), old_apps.get_model("executions", "ApiKey")
    sales = Project.objects.create(name="Sales")
    Package.objects.create(name="Orders", package_name="orders", project=sales)
    Package.objects.create(name="Loose", package_name="loose")
    Package.objects.create(name="Nightly", package_name="nightly")
    for username, (codenames, _) in LEGACY_USERS.items():
        legacy_user(old_apps, username, codenames)
    runners = Group.objects.create(name="runners")
    runners.permissions.add(Permission.objects.get(codename="run_package"))
    legacy_user(old_apps, "gus_grouped", []).groups.add(runners)
    Group.objects.create(name="empty")  # a group with no permission at all gives nothing
    legacy_user(old_apps, "nina_nothing", []).groups.add(Group.objects.get(name="empty"))
    legacy_user(old_apps, "ian_inactive", ["change_package"], is_active=False)
    legacy_user(old_apps, "norm_not_staff", ["change_package"], is_staff=False)
    User.objects.create(username="root", is_staff=True, is_superuser=True)
    ApiKey.objects.create(name="crm", key_hash="a" * 64, hint="exk_aaaaaaaa")


@pytest.mark.django_db(transaction=True)
def test_it_moves_existing_data_into_projects_without_changing_anyones_access(migrator):
    old_apps = migrate(migrator, BEFORE)
    fill_like_an_older_executor(old_apps)

    migrate(migrator, AFTER)

    default = Project.objects.get(name="Default")
    sales = Project.objects.get(name="Sales")
    assert {p.package_name: p.project.name for p in Package.objects.select_related("project")} == {
        "orders": "Sales",  # a package that had a project keeps it
        "loose": "Default",
        "nightly": "Default",
    }
    expected = {username: role for username, (_, role) in LEGACY_USERS.items()} | {"gus_grouped": "runner"}
    for project in (default, sales):
        memberships = ProjectMembership.objects.filter(project=project).select_related("user")
        assert {m.user.username: m.role for m in memberships} == expected, project
    # Superusers need no membership; users who could do nothing, inactive users and non-staff users get none.
    assert not ProjectMembership.objects.filter(
        user__username__in=["root", "nina_nothing", "ian_inactive", "norm_not_staff"]
    ).exists()
    api_key = ApiKey.objects.get(name="crm")
    assert (api_key.project, sorted(api_key.scopes)) == (None, sorted(ALL_API_SCOPES))


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_upgraded_users_the_abilities_their_permissions_gave(migrator, django_user_model):
    old_apps = migrate(migrator, BEFORE)
    fill_like_an_older_executor(old_apps)

    migrate(migrator, AFTER)

    orders = Package.objects.get(package_name="orders")
    users = {user.username: user for user in django_user_model.objects.all()}
    assert access.can(users["mia_maintainer"], Action.EDIT, orders)
    assert not access.can(users["mia_maintainer"], Action.MANAGE, orders)
    assert access.can(users["rob_runner"], Action.RUN, orders) and not access.can(
        users["rob_runner"], Action.EDIT, orders
    )
    assert access.can(users["gus_grouped"], Action.RUN, orders)
    assert access.can(users["vic_viewer"], Action.VIEW, orders) and not access.can(
        users["vic_viewer"], Action.RUN, orders
    )
    assert not access.can(users["nina_nothing"], Action.VIEW, orders)
    assert access.can(users["root"], Action.MANAGE, orders)


@pytest.mark.django_db(transaction=True)
def test_it_creates_no_default_project_when_every_package_has_one(migrator):
    old_apps = migrate(migrator, BEFORE)
    sales = old_apps.get_model("packages", "Project").objects.create(name="Sales")
    old_apps.get_model("packages", "Package").objects.create(name="Orders", package_name="orders", project=sales)

    migrate(migrator, AFTER)

    assert list(Project.objects.values_list("name", flat=True)) == ["Sales"]


@pytest.mark.django_db
def test_running_the_data_migration_again_changes_nothing(django_user_model):
    """The function is idempotent: an existing membership (here changed by an owner since) is left as it is."""
    migration = importlib.import_module("packages.migrations.0009_projects_access")
    sales = Project.objects.create(name="Sales")
    Package.objects.create(name="Loose", package_name="loose")
    legacy = legacy_user(current_apps, "rob_runner", ["run_package"])
    ProjectMembership.objects.create(project=sales, user=legacy, role="viewer")

    migration.existing_data_into_projects(current_apps, None)
    migration.existing_data_into_projects(current_apps, None)

    assert Project.objects.filter(name="Default").count() == 1
    roles = {m.project.name: m.role for m in ProjectMembership.objects.filter(user=legacy)}
    assert roles == {"Sales": "viewer", "Default": "runner"}
