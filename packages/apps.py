from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class PackagesConfig(AppConfig):
    name = "packages"
    verbose_name = "Packages"

    def ready(self) -> None:
        from . import checks, schedules  # noqa: F401  (checks: registers the system checks)
        from .models import Package

        # A package's beat task follows the package, whoever saves or deletes it (packages/schedules.py).
        post_save.connect(schedules.follow_package_save, sender=Package, dispatch_uid="package_schedule_save")
        post_delete.connect(schedules.follow_package_delete, sender=Package, dispatch_uid="package_schedule_delete")
