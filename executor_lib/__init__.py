"""Framework-free helpers that more than one app uses: the standard library only, no Django, no Celery.

Not in executor_project/, whose package imports the Celery app: workers/sandbox.py uses safe_files.py and must run
under a bare system Python (tests/security/test_unprivileged_sandbox.py drives it so, as the image's worker uid).
"""
