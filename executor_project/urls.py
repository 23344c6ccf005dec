from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from packages.git_webhook import push_webhook

from .api import api
from .health import healthz, readyz
from .metrics_view import metrics_view

admin.site.site_header = "Executor"
admin.site.site_title = "Executor"
admin.site.index_title = "Script automation"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("fx/", api.urls),
    path("git/webhook/<int:repository_id>", push_webhook, name="git_webhook"),
]
