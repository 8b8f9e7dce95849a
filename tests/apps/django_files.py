"""Django's FileResponse served by Tapster (tests/test_file_wrapper.py). The data file is
``$FW_DATA/small.bin``; ``/stats`` returns this process's sendfile counters."""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="tapster-tests-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import FileResponse, HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from tapster import _tapster  # noqa: E402

DATA = os.environ.get("FW_DATA", "")


def file_view(request: HttpRequest) -> FileResponse:
    return FileResponse(open(os.path.join(DATA, "small.bin"), "rb"), content_type="application/octet-stream")


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(_tapster.stats()))


urlpatterns = [path("file", file_view), path("stats", stats)]

application = get_wsgi_application()
