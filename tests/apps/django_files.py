"""Django's FileResponse served by Tapster (tests/test_file_wrapper.py). The data file is
``$FW_DATA/small.bin``; ``/stats`` returns this process's sendfile counters."""

from __future__ import annotations

import os

from apps.django_setup import configure

configure(__name__)

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
