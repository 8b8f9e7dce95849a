"""A minimal real Django project in one module, served by Tapster in tests/test_wsgi.py."""

from __future__ import annotations

import json
from typing import Iterator

from apps.django_setup import configure

configure(__name__)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django", content_type="text/plain")


def info(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "path": request.path,
            "path_info": request.path_info,
            "method": request.method,
            "q": request.GET.get("q"),
            "host": request.get_host(),
            "secure": request.is_secure(),
        }
    )


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def parts() -> Iterator[bytes]:
        for i in range(int(request.GET.get("n", "3"))):
            yield f"part {i};".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


def post(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    if request.content_type == "application/json":
        return JsonResponse({"json": json.loads(request.body)})
    return JsonResponse({"length": len(request.body), "form": request.POST.dict()})


urlpatterns = [
    path("hello", hello),
    path("info", info),
    path("stream", stream),
    path("post", post),
]

application = get_wsgi_application()
