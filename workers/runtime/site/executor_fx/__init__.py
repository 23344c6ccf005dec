"""Script side of the FX adapter: FX's backends answered from files the worker wrote (workers/fx_bridge.py).

The real FX libraries from PyPI are imported unchanged; only the network clients they build are swapped for
file-backed ones, at the moment their module is first imported:

- argv[1] is read from EXECUTOR_ARGS_FILE (workers/handlers/python.py says why);
- python-consul's `consul.Consul` -> FileConsul, whose `kv` reads and writes <EXECUTOR_FX_DIR>/consul/<key>.
  Writes stay inside this run's private directory.
"""

# Imported into every script at start-up, so only cheap modules here: importlib.abc alone would pull in
# importlib.resources (about 28 ms); pathlib and urllib.parse are imported when a Consul client is built.
import importlib.machinery
import os
import sys


def install() -> None:
    _load_arguments()
    if "EXECUTOR_FX_DIR" not in os.environ:
        return
    sys.meta_path.insert(0, _PatchOnImport({"consul": _patch_consul}))


def _load_arguments() -> None:
    """argv[1] (the JSON with the run's parameters and secrets) comes in a file, so no `ps` can read it."""
    path = os.environ.pop("EXECUTOR_ARGS_FILE", None)
    if path and len(sys.argv) > 1 and sys.argv[1] == "@EXECUTOR_ARGS_FILE":
        with open(path) as handle:
            sys.argv[1] = handle.read()


class _PatchOnImport:
    """A meta path finder (only find_spec is needed): lets the real module load, then patches it."""

    def __init__(self, patches):
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _patch_consul(module) -> None:
    module.Consul = FileConsul


class FileConsul:
    """Stands in for consul.Consul(host=..., port=..., ...): same `kv` calls, answered from files."""

    def __init__(self, *args, **kwargs):
        from pathlib import Path

        self.kv = FileKV(Path(os.environ["EXECUTOR_FX_DIR"]) / "consul")


class FileKV:
    """The subset of python-consul's Consul.KV that FX libraries use, with python-consul's return shapes."""

    def __init__(self, root):
        self.root = root

    def get(self, key, index=None, recurse=False, **kwargs):
        from urllib.parse import unquote

        if recurse:
            items = [
                {"Key": unquote(path.name), "Value": path.read_bytes()}
                for path in sorted(self.root.iterdir())
                if unquote(path.name).startswith(key)
            ]
            return index, items or None
        path = self._path(key)
        if not path.is_file():
            return index, None
        return index, {"Key": key, "Value": path.read_bytes()}

    def put(self, key, value, **kwargs):
        data = value.encode() if isinstance(value, str) else bytes(value or b"")
        self._path(key).write_bytes(data)
        return True

    def delete(self, key, **kwargs):
        self._path(key).unlink(missing_ok=True)
        return True

    def _path(self, key):
        from urllib.parse import quote

        return self.root / quote(str(key), safe="")
