"""Projects in the admin: owners manage members, everyone else reads; the audit log records edits and member
changes without values; platform tables are superuser-only; another project's package is not there."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from packages.audit import AuditAction
from packages.models import AuditEntry, Package, Project, ProjectMembership, ProjectRole, Secret, SqlConnection, Tag
from tests.factories import add_secret, empty_inline, make_package, package_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def sales(db) -> Project:
    return Project.objects.create(name="Sales")


@pytest.fixture
def hr(db) -> Project:
    return Project.objects.create(name="Human Resources")


@pytest.fixture
def member(django_user_model, client):
    """member(project, role, username) -> a logged-in staff user with that role (no model permissions at all)."""

    def make(project: Project, role: str, username: str = "alice"):
        user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
        ProjectMembership.objects.create(project=project, user=user, role=role)
        client.force_login(user)
        return user

    return make


def project_form(project: Project, members: list[dict], **fields) -> dict:
    """The project page's POST: its fields, the members inline (rows of id/user/role/DELETE), no secrets."""
    data = {"name": project.name, "description": project.description, **empty_inline("secrets")}
    data |= {"memberships-TOTAL_FORMS": str(len(members)), "memberships-MIN_NUM_FORMS": "0",
             "memberships-MAX_NUM_FORMS": "1000",
             "memberships-INITIAL_FORMS": str(sum(1 for row in members if row.get("id")))}  # fmt: skip
    for index, row in enumerate(members):
        data |= {f"memberships-{index}-{key}": value for key, value in row.items()}
    return data | fields


def existing_rows(project: Project) -> list[dict]:
    return [{"id": str(m.pk), "user": m.user.username, "role": m.role} for m in project.memberships.all()]


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


# Members


def test_an_owner_adds_a_member_by_username_and_the_log_says_so(client, member, sales, django_user_model):
    owner = member(sales, ProjectRole.OWNER)
    bob = django_user_model.objects.create_user("bob", password="pw")  # not staff yet
    rows = [*existing_rows(sales), {"user": "bob", "role": ProjectRole.RUNNER}]

    response = client.post(change_url(sales), project_form(sales, rows))

    assert response.status_code == 302, response.context["errors"] if response.context else response
    assert ProjectMembership.objects.get(project=sales, user=bob).role == ProjectRole.RUNNER
    bob.refresh_from_db()
    assert bob.is_staff  # so he can log in; the role is what lets him do anything
    entry = AuditEntry.objects.get(action=AuditAction.SET_MEMBER)
    assert (entry.project, entry.user, entry.details) == (sales, owner, {"user": "bob", "role": "runner"})


def test_an_unknown_username_is_refused_and_nobody_is_added(client, member, sales):
    member(sales, ProjectRole.OWNER)
    rows = [*existing_rows(sales), {"user": "nobody", "role": ProjectRole.VIEWER}]

    response = client.post(change_url(sales), project_form(sales, rows))

    assert response.status_code == 200
    assert "No active user has this username." in response.content.decode()
    assert sales.memberships.count() == 1


def test_an_owner_removes_a_member_and_changes_a_role(client, member, sales, django_user_model):
    member(sales, ProjectRole.OWNER)
    bob = django_user_model.objects.create_user("bob", is_staff=True)
    carol = django_user_model.objects.create_user("carol", is_staff=True)
    ProjectMembership.objects.create(project=sales, user=bob, role=ProjectRole.RUNNER)
    ProjectMembership.objects.create(project=sales, user=carol, role=ProjectRole.VIEWER)
    rows = existing_rows(sales)  # alice, bob, carol
    rows[1]["DELETE"] = "on"
    rows[2]["role"] = ProjectRole.MAINTAINER

    assert client.post(change_url(sales), project_form(sales, rows)).status_code == 302

    assert dict(sales.memberships.values_list("user__username", "role")) == {"alice": "owner", "carol": "maintainer"}
    logged = set(AuditEntry.objects.values_list("action", "details__user", "details__role"))
    assert logged == {(AuditAction.REMOVE_MEMBER, "bob", "runner"), (AuditAction.SET_MEMBER, "carol", "maintainer")}


@pytest.mark.parametrize("role", [ProjectRole.MAINTAINER, ProjectRole.RUNNER, ProjectRole.VIEWER])
def test_only_owners_manage_members_the_others_read_them(client, member, sales, django_user_model, role):
    member(sales, role)
    django_user_model.objects.create_user("mallory")
    rows = [*existing_rows(sales), {"user": "mallory", "role": ProjectRole.OWNER}]

    page = client.get(change_url(sales))
    response = client.post(change_url(sales), project_form(sales, rows, name="Renamed"))

    assert page.status_code == 200 and "alice" in page.content.decode()
    assert 'name="memberships-0-role"' not in page.content.decode()  # read-only: no inputs
    assert response.status_code == 403
    assert sales.memberships.count() == 1 and Project.objects.get().name == "Sales"
    assert not AuditEntry.objects.exists()


def test_another_projects_page_is_not_there_and_projects_are_made_by_superusers(client, member, sales, hr):
    member(sales, ProjectRole.OWNER)

    listing = client.get(reverse("admin:packages_project_changelist")).content.decode()

    assert "Sales" in listing and "Human Resources" not in listing
    assert client.get(change_url(hr)).status_code == 404
    assert client.post(change_url(hr), project_form(hr, [])).status_code == 404
    assert client.get(reverse("admin:packages_project_add")).status_code == 403
    assert client.post(reverse("admin:packages_project_delete", args=[sales.pk]), {"post": "yes"}).status_code == 403
    assert Project.objects.count() == 2


def test_project_secrets_are_written_by_owners_only(client, member, sales, django_user_model):
    maintainer = django_user_model.objects.create_user("max", is_staff=True)
    ProjectMembership.objects.create(project=sales, user=maintainer, role=ProjectRole.MAINTAINER)
    member(sales, ProjectRole.OWNER)
    data = project_form(sales, existing_rows(sales))
    data |= {"secrets-TOTAL_FORMS": "1", "secrets-0-name": "dwh_password", "secrets-0-value": "pw-very-secret-9"}

    client.force_login(maintainer)
    assert client.post(change_url(sales), data).status_code == 403
    assert not Secret.objects.exists()
    client.force_login(ProjectMembership.objects.get(role=ProjectRole.OWNER).user)
    assert client.post(change_url(sales), data).status_code == 302

    assert Secret.objects.get(project=sales).reveal() == "pw-very-secret-9"
    entry = AuditEntry.objects.get(action=AuditAction.CREATE)
    assert (entry.object_repr, entry.project) == ("dwh_password", sales)
    assert "pw-very-secret-9" not in json.dumps(list(AuditEntry.objects.values()), default=str)


# The set_member command


def test_set_member_gives_a_role_makes_staff_and_logs_it(sales, django_user_model, capsys):
    dave = django_user_model.objects.create_user("dave")

    call_command("set_member", "Sales", "dave", "maintainer")
    call_command("set_member", "Sales", "dave", "owner")

    assert ProjectMembership.objects.get(project=sales, user=dave).role == ProjectRole.OWNER
    dave.refresh_from_db()
    assert dave.is_staff
    assert "dave is now owner of Sales" in capsys.readouterr().out
    entries = AuditEntry.objects.order_by("at", "pk")
    assert [(e.actor, e.action, e.details["role"]) for e in entries] == [
        ("manage.py set_member", AuditAction.SET_MEMBER, "maintainer"),
        ("manage.py set_member", AuditAction.SET_MEMBER, "owner"),
    ]


def test_set_member_remove_takes_the_user_out(sales, django_user_model):
    dave = django_user_model.objects.create_user("dave")
    ProjectMembership.objects.create(project=sales, user=dave, role=ProjectRole.RUNNER)

    call_command("set_member", "Sales", "dave", "--remove")

    assert not ProjectMembership.objects.exists()
    assert AuditEntry.objects.get().details == {"user": "dave", "role": "runner"}
    with pytest.raises(CommandError, match="dave is not a member of Sales"):
        call_command("set_member", "Sales", "dave", "--remove")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Nope", "dave", "viewer"], "no project named 'Nope' \\(projects: Sales\\)"),
        (["Sales", "nobody", "viewer"], "no user named 'nobody'"),
        (["Sales", "dave", "admin"], "unknown role 'admin': choose one of viewer, runner, maintainer, owner"),
        (["Sales", "dave"], "a ROLE is needed"),
        (["Sales", "dave", "viewer", "--remove"], "--remove takes no ROLE"),
    ],
)
def test_set_member_explains_what_is_wrong_and_changes_nothing(sales, django_user_model, args, message):
    django_user_model.objects.create_user("dave")
    with pytest.raises(CommandError, match=message):
        call_command("set_member", *args)
    assert not ProjectMembership.objects.exists() and not AuditEntry.objects.exists()


# The audit log of package edits


def test_editing_and_deleting_a_package_are_logged_with_field_names_only(client, member, sales):
    maintainer = member(sales, ProjectRole.MAINTAINER)
    package = make_package("seed_package", project=sales, name="Seed package", description="old")
    data = package_form(project=str(sales.pk), description="new words", **{"scripts-TOTAL_FORMS": "0"})
    data |= {"secrets-TOTAL_FORMS": "1", "secrets-0-name": "api_token", "secrets-0-value": "tok-very-secret-1"}

    assert client.post(change_url(package), data).status_code == 302
    assert client.post(reverse("admin:packages_package_delete", args=[package.pk]), {"post": "yes"}).status_code == 302

    entries = {(e.action, e.object_type, e.object_repr): e for e in AuditEntry.objects.all()}
    assert set(entries) == {
        (AuditAction.EDIT, "package", "Seed package"),
        (AuditAction.CREATE, "secret", "api_token"),
        (AuditAction.DELETE, "package", "Seed package"),
    }
    assert entries[(AuditAction.EDIT, "package", "Seed package")].details == {"fields": ["description"]}
    assert all(e.project == sales and e.user == maintainer for e in entries.values())
    assert "tok-very-secret-1" not in json.dumps(list(AuditEntry.objects.values()), default=str)


def test_the_audit_log_shows_maintainers_their_projects_entries_only(client, member, sales, hr):
    AuditEntry.objects.create(project=sales, actor="alice", action=AuditAction.EDIT, object_type="package",
                              object_repr="sales_orders")  # fmt: skip
    AuditEntry.objects.create(project=hr, actor="hank", action=AuditAction.EDIT, object_type="package",
                              object_repr="hr_payroll")  # fmt: skip
    platform = AuditEntry.objects.create(actor="root", action=AuditAction.ISSUE_KEY, object_type="API key",
                                         object_repr="platform_key")  # fmt: skip
    member(sales, ProjectRole.MAINTAINER)
    log = reverse("admin:packages_auditentry_changelist")

    page = client.get(log).content.decode()

    assert "sales_orders" in page and "hr_payroll" not in page and "platform_key" not in page
    assert "Human Resources" not in page  # not even as a filter choice
    assert client.get(change_url(AuditEntry.objects.get(project=hr))).status_code == 404
    assert client.get(change_url(platform)).status_code == 404
    assert "sales_orders" in client.get(log, {"q": "sales"}).content.decode()
    assert client.get(log, {"action": AuditAction.DELETE}).content.decode().count("sales_orders") == 0
    sales_entry = AuditEntry.objects.get(project=sales)
    assert client.post(change_url(sales_entry), {"actor": "someone else"}).status_code == 403
    assert client.get(reverse("admin:packages_auditentry_add")).status_code == 403


@pytest.mark.parametrize("role", [ProjectRole.VIEWER, ProjectRole.RUNNER])
def test_viewers_and_runners_do_not_read_the_audit_log(client, member, sales, role):
    AuditEntry.objects.create(project=sales, actor="alice", action=AuditAction.EDIT, object_type="package")
    member(sales, role)
    assert client.get(reverse("admin:packages_auditentry_changelist")).status_code == 403


def test_superusers_read_every_entry_and_change_none(admin_client, sales):
    entry = AuditEntry.objects.create(actor="root", action=AuditAction.ISSUE_KEY, object_type="API key",
                                      object_repr="platform_key")  # fmt: skip
    assert "platform_key" in admin_client.get(reverse("admin:packages_auditentry_changelist")).content.decode()
    assert (
        admin_client.post(reverse("admin:packages_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


# Packages of other projects, and what members may choose


def test_another_projects_package_answers_404_everywhere(client, member, sales, hr):
    member(sales, ProjectRole.OWNER)
    theirs = make_package("hr_payroll", files={"pay.py": "print('salaries')"}, project=hr)
    script = theirs.scripts.get()

    listing = client.get(reverse("admin:packages_package_changelist")).content.decode()

    assert "hr_payroll" not in listing.lower() and "Hr Payroll" not in listing
    for url in [change_url(theirs), reverse("admin:packages_package_run", args=[theirs.pk]),
                reverse("admin:packages_package_delete", args=[theirs.pk]),
                reverse("admin:packages_script_download", args=[script.pk])]:  # fmt: skip
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("admin:packages_package_run", args=[theirs.pk])).status_code == 404
    assert not theirs.executions.exists()


def test_a_viewer_reads_the_package_and_its_state_but_cannot_change_it(client, member, sales):
    member(sales, ProjectRole.VIEWER)
    package = make_package("seed_package", files={"a.py": "print(1)"}, project=sales, name="Seed package")
    add_secret(package, name="api_token", value="tok-very-secret-1")

    page = client.get(change_url(package))
    response = client.post(change_url(package), package_form(project=str(sales.pk), description="defaced"))

    assert page.status_code == 200 and "context.state" in page.content.decode()
    assert "api_token" in page.content.decode() and "tok-very-secret-1" not in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert response.status_code == 403 and Package.objects.get().description == ""


def test_a_maintainer_puts_packages_only_into_projects_they_maintain(client, member, sales, hr):
    alice = member(sales, ProjectRole.MAINTAINER)
    ProjectMembership.objects.create(project=hr, user=alice, role=ProjectRole.VIEWER)
    add_page = client.get(reverse("admin:packages_package_add")).content.decode()

    into_hr = client.post(reverse("admin:packages_package_add"), package_form(project=str(hr.pk)))
    into_none = client.post(reverse("admin:packages_package_add"), package_form(project=""))
    into_sales = client.post(reverse("admin:packages_package_add"), package_form(project=str(sales.pk)))

    assert f'<option value="{sales.pk}">Sales</option>' in add_page and ">Human Resources</option>" not in add_page
    assert into_hr.status_code == 200 and "Select a valid choice" in into_hr.content.decode()
    assert into_none.status_code == 200 and "This field is required" in into_none.content.decode()
    assert into_sales.status_code == 302
    assert list(Package.objects.values_list("project__name", flat=True)) == ["Sales"]
    created = set(AuditEntry.objects.values_list("action", "object_type", "object_repr"))
    assert created == {("create", "package", "Seed package"), ("create", "script", "config.json"),
                       ("create", "script", "test_scr.py")}  # fmt: skip


def test_the_list_filter_offers_only_the_users_projects(client, member, sales, hr):
    member(sales, ProjectRole.VIEWER)
    make_package("sales_orders", project=sales)
    make_package("hr_payroll", project=hr)

    page = client.get(reverse("admin:packages_package_changelist")).content.decode()

    assert f"project__id__exact={sales.pk}" in page and f"project__id__exact={hr.pk}" not in page


# Platform-level tables


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:django_celery_beat_periodictask_changelist",
        "admin:django_celery_beat_periodictask_add",
        "admin:django_celery_beat_crontabschedule_changelist",
        "admin:django_celery_beat_intervalschedule_changelist",
        "admin:django_celery_beat_clockedschedule_changelist",
        "admin:django_celery_beat_solarschedule_changelist",
        "admin:auth_user_changelist",
        "admin:auth_user_add",
        "admin:auth_group_changelist",
        "admin:packages_platformsecret_changelist",
        "admin:packages_sqlconnection_changelist",
        "admin:packages_eventtype_changelist",
    ],
)
def test_platform_tables_are_superuser_only_whatever_model_permissions_say(client, member, admin_client, sales,
                                                                            url_name):  # fmt: skip
    owner = member(sales, ProjectRole.OWNER)
    owner.user_permissions.add(*Permission.objects.all())  # what an old "all permissions" staff account had
    client.force_login(owner)

    assert client.get(reverse(url_name)).status_code == 403
    assert admin_client.get(reverse(url_name)).status_code == 200


def test_a_member_cannot_put_a_schedule_on_beat_or_make_themself_superuser(client, member, sales):
    owner = member(sales, ProjectRole.OWNER)
    owner.user_permissions.add(*Permission.objects.all())
    client.force_login(owner)
    crontab = CrontabSchedule.objects.create(minute="*")

    client.post(reverse("admin:django_celery_beat_periodictask_add"), {
        "name": "sneaky", "regtask": "executor.scheduled_tick", "crontab": crontab.pk, "enabled": "on",
    })  # fmt: skip
    client.post(change_url(owner), {"username": owner.username, "is_superuser": "on", "is_staff": "on"})

    assert not PeriodicTask.objects.filter(name="sneaky").exists()
    owner.refresh_from_db()
    assert not owner.is_superuser


def test_the_index_shows_a_member_no_platform_table(client, member, sales):
    member(sales, ProjectRole.OWNER).user_permissions.add(*Permission.objects.all())
    SqlConnection.objects.create(name="dwh", url_encrypted="x")

    page = client.get(reverse("admin:index")).content.decode()

    assert "Periodic tasks" not in page and "Users" not in page and "Platform secrets" not in page
    assert "SQL connections" not in page and "Event types" not in page
    assert "Packages" in page and "Projects" in page


def test_tags_are_seen_by_members_added_by_maintainers_and_renamed_by_superusers(client, member, sales, hr,
                                                                                 django_user_model):  # fmt: skip
    tag = Tag.objects.create(name="finance")
    member(sales, ProjectRole.VIEWER)
    assert "finance" in client.get(reverse("admin:packages_tag_changelist")).content.decode()
    assert client.post(reverse("admin:packages_tag_add"), {"name": "mine"}).status_code == 403

    member(hr, ProjectRole.MAINTAINER, username="max")
    assert client.post(reverse("admin:packages_tag_add"), {"name": "mine"}).status_code == 302
    assert client.post(change_url(tag), {"name": "renamed"}).status_code == 403
    assert sorted(Tag.objects.values_list("name", flat=True)) == ["finance", "mine"]


@pytest.mark.parametrize(("role", "has_link"), [(ProjectRole.VIEWER, False), (ProjectRole.RUNNER, False),
                                               (ProjectRole.MAINTAINER, True), (ProjectRole.OWNER, True)])  # fmt: skip
def test_the_project_page_links_its_audit_log_for_maintainers_and_owners(client, member, sales, role, has_link):
    member(sales, role)
    log = f"{reverse('admin:packages_auditentry_changelist')}?project__id__exact={sales.pk}"
    assert (log in client.get(change_url(sales)).content.decode()) == has_link
