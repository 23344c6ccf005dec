#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "executor_project.settings")
    from executor_project.quick_start import missing_database

    # Before Django loads the settings, which would create the quick start's data directory and key.
    refusal = missing_database(sys.argv)
    if refusal:
        sys.exit(refusal)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
