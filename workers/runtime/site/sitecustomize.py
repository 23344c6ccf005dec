"""Imported by Python at start-up in every script the executor runs (the worker puts this directory on
PYTHONPATH). It installs the FX adapter; outside the executor (no EXECUTOR_FX_DIR) it does nothing."""

import executor_fx

executor_fx.install()
