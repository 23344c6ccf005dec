"""Git repositories made on the fly for tests (dulwich; no network): an FX package repository on branch main."""

import json
from pathlib import Path

from dulwich import porcelain

AUTHOR = b"Test Author <test@example.com>"


class FxRepository:
    def __init__(self, path: Path):
        self.path = Path(path)
        repo = porcelain.init(self.path)
        repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/main")
        repo.close()

    @property
    def url(self) -> str:
        return self.path.as_uri()  # file:///...

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files at paths relative to the repository root; returns the commit id."""
        for relative, content in files.items():
            path = self.path / relative
            if content is None:
                porcelain.remove(self.path, paths=[str(path)])
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
                porcelain.add(self.path, paths=[str(path)])
        return porcelain.commit(self.path, message=message, author=AUTHOR, committer=AUTHOR).decode()

    def branch(self, name: str) -> None:
        porcelain.branch_create(self.path, name)

    def checkout(self, name: str) -> None:
        porcelain.checkout(self.path, name)


def fx_package(name: str, *, app: str = "print('hello')", schedule: str = "20 * * * *",
               trigger_events: list[str] | None = None, config: dict | None = None) -> dict[str, str]:  # fmt: skip
    """The files of one package directory in the FX layout."""
    manifest = {"description": f"{name} from Git", "schedule": schedule, "trigger_events": trigger_events or [],
                "execution_order": ["app.py"]}  # fmt: skip
    parameters = {"fields": [{"type": "text", "name": "region", "label": "Region", "default": "eu"}]}
    return {
        f"{name}/manifest.json": json.dumps(manifest),
        f"{name}/config.json": json.dumps(config or {"greeting": f"hello from {name}"}),
        f"{name}/parameters.json": json.dumps(parameters),
        f"{name}/app.py": app,
    }
