"""The sweep of abandoned workspaces (workers/workspace_sweep.py), on real directories and the real ledger: a live
run's directory stays, a dead one's goes with everything in it, and nothing a step planted is followed."""

import os
import tempfile
import time
from pathlib import Path

import pytest

from executions.models import Execution, ExecutionStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers.lease import claim
from workers.workspace import create_workspace
from workers.workspace_sweep import database_tag, directory_prefix, sweep
from workers.workspace_trash import workspace_root

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
NO_SUCH_PID = 4_194_305  # above the kernel's PID_MAX_LIMIT: no process ever has it
STEP_UID = 35097  # the owner of a step's directories, as on a root worker (not a slot of this test run)


def claimed(name: str = "alice_reports"):
    execution = trigger_execution(make_package(name, files={"a.py": ""}), trigger_type=TriggerType.MANUAL)
    return claim(str(execution.id), "worker@host")


def workspace_of(lease, work_dir: Path) -> Path:
    """What runner.py makes for a run: its package, and (EXECUTOR_SANDBOX=off) the argument file with secrets."""
    root = Path(tempfile.mkdtemp(prefix=directory_prefix(lease), dir=work_dir))
    workspace = create_workspace(root, {"a.py": b"print(1)"})
    (workspace.private_dir / "argv.json").write_text('{"secrets": {"TOKEN": "s3cret"}}')
    return root


def finish(lease, **fields) -> None:
    Execution.objects.filter(pk=lease.execution_id).update(**fields)


def test_a_live_run_s_workspace_stays_and_those_of_runs_that_ended_without_their_worker_go(work_dir):
    live, completed, reaped, handed_over = claimed("live"), claimed("done"), claimed("reaped"), claimed("handed")
    directories = {lease: workspace_of(lease, work_dir) for lease in (live, completed, reaped, handed_over)}
    finish(completed, status=ExecutionStatus.COMPLETED)
    finish(reaped, status=ExecutionStatus.FAILED, lease_owner="reaped")
    finish(handed_over, status=ExecutionStatus.PENDING, lease_owner="")
    claim(handed_over.execution_id, "worker@other-host")  # running again elsewhere, under another lease

    assert sweep() == 3

    assert sorted(work_dir.iterdir()) == [directories[live]]
    assert (directories[live] / "private" / "argv.json").exists()


def test_a_workspace_s_name_says_whose_it_is_without_the_lease_token(work_dir):
    """The name is in the step's HOME and TMPDIR: it carries a digest of the lease, never the token itself."""
    lease = claimed()
    name = workspace_of(lease, work_dir).name

    assert name.startswith(f"executor-{lease.execution_id}-{database_tag()}-")
    assert lease.token not in name and lease.token.split(".")[-1] not in name


def test_only_this_installation_s_workspace_directories_are_judged(work_dir, tmp_path):
    """Another database's directories (a test suite sharing /tmp) are not this ledger's to judge; a name that
    is a link, a file, or another user's directory is left alone too."""
    gone = claimed()
    own_unknown = work_dir / f"{directory_prefix(gone)}abcd1234"
    Execution.objects.filter(pk=gone.execution_id).delete()
    own_unknown.mkdir()
    foreign = work_dir / own_unknown.name.replace(f"-{database_tag()}-", "-0badc0de-")
    foreign.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    dead = claimed("dead")
    finish(dead, status=ExecutionStatus.COMPLETED)
    link = work_dir / f"{directory_prefix(dead)}link5678"
    link.symlink_to(outside)
    plain_file = work_dir / f"{directory_prefix(dead)}file5678"
    plain_file.write_text("not a directory")
    someone_else_s = work_dir / f"{directory_prefix(dead)}other567"
    someone_else_s.mkdir()
    os.chown(someone_else_s, STEP_UID, STEP_UID)
    unrelated = [work_dir / "executor-selftest-abcd1234", work_dir / "something-else"]
    for directory in unrelated:
        directory.mkdir()

    assert sweep() == 1

    assert not own_unknown.exists()  # its execution is gone from this database: nobody runs it
    assert foreign.is_dir() and link.is_symlink() and plain_file.is_file() and someone_else_s.is_dir()
    assert all(directory.is_dir() for directory in unrelated)
    assert (outside / "keep").read_text() == "keep"


def test_what_a_step_planted_in_its_workspace_is_removed_and_never_followed(work_dir, tmp_path):
    outside = tmp_path / "outside"
    (outside / "directory").mkdir(parents=True)
    (outside / "directory" / "file").write_text("keep")
    (outside / "file").write_text("keep")
    lease = claimed()
    root = workspace_of(lease, work_dir)
    package = root / "package"
    (package / "to_directory").symlink_to(outside / "directory")
    (package / "to_file").symlink_to(outside / "file")
    (package / "to_root").symlink_to("/")
    os.mkfifo(package / "fifo")
    nested = package / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "escape").symlink_to(outside)
    (nested / "data").write_bytes(b"x" * 1000)
    locked = package / "locked"
    locked.mkdir()
    (locked / "inside").write_text("x")
    locked.chmod(0o000)
    for path in package.rglob("*"):
        os.lchown(path, STEP_UID, STEP_UID)
    finish(lease, status=ExecutionStatus.FAILED, lease_owner="reaped")

    assert sweep() == 1

    assert list(work_dir.iterdir()) == []
    assert (outside / "directory" / "file").read_text() == "keep" and (outside / "file").read_text() == "keep"


def test_directories_named_before_names_carried_a_lease_go_once_no_run_can_be_using_them(work_dir, settings):
    settings.EXECUTOR_MAX_EXECUTION_SECONDS = 3600
    running = claimed("running")
    old_and_running = work_dir / f"executor-{running.execution_id[:8]}-abcd1234"
    old_and_done = work_dir / "executor-0123abcd-abcd1234"
    young = work_dir / "executor-4567abcd-abcd1234"
    for directory in (old_and_running, old_and_done, young):
        directory.mkdir()
        (directory / "argv.json").write_text("{}")
    two_hours_ago = time.time() - 7200
    for directory in (old_and_running, old_and_done):
        os.utime(directory, (two_hours_ago, two_hours_ago))

    assert sweep() == 1

    assert sorted(work_dir.iterdir()) == sorted([old_and_running, young])


def test_a_work_directory_that_cannot_be_read_is_reported_not_raised(settings, tmp_path, caplog):
    settings.EXECUTOR_WORK_DIR = str(tmp_path / "missing")

    assert sweep() == 0
    assert "cannot sweep the work directory" in caplog.text


def test_a_finished_run_s_workspace_is_set_aside_out_of_the_step_s_reach_and_removed_by_its_process(work_dir):
    lease = claimed()
    with workspace_root(directory_prefix(lease), str(work_dir)) as root:
        workspace = create_workspace(root, {"a.py": b"print(1)"})
        os.chown(workspace.package_dir, STEP_UID, STEP_UID)
        (workspace.package_dir / "link").symlink_to(work_dir.parent)  # never followed
        root.chmod(0o711)  # as for a warm step's server (workers/warm.py)

    assert not root.exists()  # gone from the slot at once, under a name the next run cannot know
    deadline = time.monotonic() + 10
    while list(work_dir.iterdir()):
        set_aside = list(work_dir.iterdir())
        assert all(path.name.startswith(f"executor-done-{os.getpid()}-") for path in set_aside), set_aside
        assert all(path.stat().st_mode & 0o777 == 0o700 for path in set_aside if path.exists())
        assert time.monotonic() < deadline, set_aside
        time.sleep(0.01)
    assert work_dir.parent.exists()


def test_workspaces_set_aside_by_a_process_that_is_gone_are_swept_and_those_of_a_live_one_are_not(work_dir):
    left = work_dir / f"executor-done-{NO_SUCH_PID}-0123456789abcdef"
    kept = work_dir / f"executor-done-{os.getpid()}-0123456789abcdef"
    for directory in (left, kept):
        (directory / "package").mkdir(parents=True)
        (directory / "package" / "a.py").write_text("x")

    assert sweep() == 1

    assert list(work_dir.iterdir()) == [kept]
