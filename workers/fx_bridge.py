"""Worker side of the FX adapter: lays out the files that FX backends answer from inside a step.

The script side lives in workers/runtime/site/executor_fx/ and is loaded into every script by the runtime's
sitecustomize. Together they are the one place that knows FX's backends:

- Consul (ferris_cli's ApplicationConfigurator): each key is a file in <fx>/consul/, named by the key
  percent-encoded. The package's config.json is stored under the package's technical name, the platform
  configuration under "ferris.env" (ferris_cli's DEFAULT_CONFIG).
"""

import json
from pathlib import Path
from urllib.parse import quote

from django.conf import settings

RUNTIME_SITE_DIR = Path(settings.BASE_DIR) / "workers" / "runtime" / "site"
PLATFORM_CONFIG_KEY = "ferris.env"


def prepare(fx_dir: Path, package_name: str, config_json: bytes | None) -> dict[str, str]:
    """Write the step's FX files and return the environment variables that point the adapter at them."""
    consul = fx_dir / "consul"
    consul.mkdir(exist_ok=True)
    _put(consul, package_name, config_json or b"{}")
    _put(consul, PLATFORM_CONFIG_KEY, json.dumps({}).encode())
    return {
        "PYTHONPATH": str(RUNTIME_SITE_DIR),
        "EXECUTOR_FX_DIR": str(fx_dir),
        # ferris_cli only builds a Consul client when CONSUL_HOST is set; the adapter's client never connects.
        "CONSUL_HOST": "executor-fx-adapter",
        "CONSUL_PORT": "8500",
    }


def _put(consul_dir: Path, key: str, value: bytes) -> None:
    (consul_dir / quote(key, safe="")).write_bytes(value)
