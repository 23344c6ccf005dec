from django.db import models


class ReaperClock(models.Model):
    """One row (pk 1): when the reaper last ran, and when it last came back after a pause (workers/reaper.py)."""

    last_run_at = models.DateTimeField()
    resumed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"reaper last ran at {self.last_run_at:%Y-%m-%d %H:%M:%S}"
