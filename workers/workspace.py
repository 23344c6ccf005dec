"""The private directory one execution runs in, and the environment its scripts get.

    <root>/package/   every file of the package (the scripts' working directory, so siblings import)
    <root>/home/      HOME
    <root>/tmp/       TMPDIR
    <root>/fx/        files the FX adapter answers from (workers/fx_bridge.py)
    <root>/private/   argv[1], the package's variables, an SQL step's connection: in the sandbox, memory-only
                      files bound read-only there (workers/sandbox.py); on the host it stays empty, except with
                      EXECUTOR_SANDBOX=off, where they are written there until the step's runtime has read them
                      (workers/runtime/) and are removed after the step in any case

The root and private/ belong to the worker (mode 700) and are never bound into the sandbox as they are: a step
can write only in the four directories above private/, and the worker treats everything in those as hostile
(executor_lib/safe_files.py).

The root's name says which run and lease it belongs to, so that what a killed worker left behind is found and
removed (workers/workspace_sweep.py).

The environment is built from nothing: scripts never see the worker's own variables (database and broker
credentials, SECRET_KEY).
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def package_dir(self) -> Path:
        return self.root / "package"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def fx_dir(self) -> Path:
        return self.root / "fx"

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    @property
    def step_dirs(self) -> tuple[Path, ...]:
        """The directories a step may write to (bound read-write into its sandbox)."""
        return (self.package_dir, self.home, self.tmp, self.fx_dir)


def create_workspace(root: Path, files: dict[str, bytes]) -> Workspace:
    """`root`: a new, empty directory of the worker's own (tempfile makes it mode 700)."""
    workspace = Workspace(root)
    for directory in (*workspace.step_dirs, workspace.private_dir):
        directory.mkdir(mode=0o700)
    for file_name, content in files.items():
        # File names are validated on save; this guards against anything that slipped past into a path.
        if Path(file_name).name != file_name or file_name in {".", ".."}:
            raise ValueError(f"refusing to write file outside the package directory: {file_name!r}")
        (workspace.package_dir / file_name).write_bytes(content)
    return workspace


def add_run_files(workspace: Workspace, files: dict[str, bytes]) -> None:
    """Files given to this run (run-form uploads) at their relative paths under the package directory."""
    for relative, content in files.items():
        path = (workspace.package_dir / relative).resolve()
        if workspace.package_dir.resolve() not in path.parents:
            raise ValueError(f"refusing to write a run file outside the package directory: {relative!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def base_environment(workspace: Workspace, runtime_bin: Path) -> dict[str, str]:
    return {
        "PATH": f"{runtime_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workspace.home),
        "TMPDIR": str(workspace.tmp),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
