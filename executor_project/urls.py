from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from executions.api import api

from .health import healthz

admin.site.site_header = "Executor"
admin.site.site_title = "Executor"
admin.site.index_title = "Script automation"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("fx/", api.urls),
]
