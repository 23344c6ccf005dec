from django.apps import AppConfig


class PackagesConfig(AppConfig):
    name = "packages"
    verbose_name = "Packages"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
