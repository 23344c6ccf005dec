from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Executions"

    def ready(self) -> None:
        from executor_project import metrics

        from . import metrics_samples, saved_runs
        from .models import Execution, SavedExecution

        # The gauges a scrape of /metrics samples (executor_project/metrics.py cannot import this app).
        metrics.register_sampler("queues", metrics_samples.queue_depths)
        metrics.register_sampler("executions", metrics_samples.executions_by_status)

        # A saved run's beat task follows the execution (executions/saved_runs.py). Django sends a proxy model's
        # signals with the proxy as sender: the Saved executions page saves and deletes SavedExecution objects.
        for model in (Execution, SavedExecution):
            uid = f"saved_run_schedule_{model.__name__}"
            post_save.connect(saved_runs.follow_execution_save, sender=model, dispatch_uid=f"{uid}_save")
            post_delete.connect(saved_runs.follow_execution_delete, sender=model, dispatch_uid=f"{uid}_delete")
