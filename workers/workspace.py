"""The private directory one execution runs in, and the environment its scripts get.

    <root>/package/   every file of the package (the scripts' working directory, so siblings import)
    <root>/home/      HOME
    <root>/tmp/       TMPDIR
    <root>/fx/        files the FX adapter answers from (workers/fx_bridge.py)

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


def create_workspace(root: Path, files: dict[str, bytes]) -> Workspace:
    workspace = Workspace(root)
    for directory in (workspace.package_dir, workspace.home, workspace.tmp, workspace.fx_dir):
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
