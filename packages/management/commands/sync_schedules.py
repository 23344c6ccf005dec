from django.core.management.base import BaseCommand
from django_celery_beat.models import PeriodicTask

from packages.models import Package
from packages.schedules import periodic_task_name, remove_package_schedule, sync_package_schedule


class Command(BaseCommand):
    help = "Bring django-celery-beat's periodic tasks in line with every package's schedule (repairs drift)."

    def handle(self, *args, **options):
        packages = list(Package.objects.all())
        for package in packages:
            sync_package_schedule(package)
        known = {periodic_task_name(package.pk) for package in packages}
        orphans = PeriodicTask.objects.filter(name__startswith="executor.package.").exclude(name__in=known)
        removed = 0
        for task in orphans:
            remove_package_schedule(int(task.name.rsplit(".", 1)[1]))
            removed += 1
        self.stdout.write(f"Synced {len(packages)} package schedule(s); removed {removed} orphaned task(s).")
